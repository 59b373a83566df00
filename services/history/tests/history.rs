//! History against a real MySQL-protocol server and a real Redis.

use chat_history::{History, Settings};
use chat_proto::history_service_server::HistoryService;
use chat_proto::{ListRequest, ListResponse, NewMessage, Role, SaveRequest};
use chat_testing::history::save_request;
use chat_testing::{TestDatabase, TestRedis};
use mysql_async::prelude::Queryable;
use tonic::Request;

mod support;

fn settings(db: &TestDatabase, redis: &TestRedis) -> Settings {
    Settings {
        mysql_dsn: db.url.clone().into(),
        redis_addr: redis.addr.clone(),
        redis_key_prefix: redis.prefix.clone(),
        history_cache_size: 40,
        ..Settings::default()
    }
}

async fn save(history: &History, user: &str, turns: &[(Role, &str)]) -> anyhow::Result<Vec<i64>> {
    Ok(history
        .save(Request::new(save_request(user, turns)))
        .await?
        .into_inner()
        .ids)
}

async fn list(history: &History, user: &str, limit: u32) -> anyhow::Result<ListResponse> {
    Ok(history
        .list(Request::new(ListRequest {
            user_id: user.into(),
            limit,
            ..ListRequest::default()
        }))
        .await?
        .into_inner())
}

fn texts(response: &ListResponse) -> Vec<&str> {
    response.messages.iter().map(|m| m.text.as_str()).collect()
}

#[tokio::test]
async fn lists_oldest_first_from_mysql_and_from_the_cache_alike() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db, &redis)).await?;
    save(
        &history,
        "u1",
        &[(Role::User, "你好，世界 🌏"), (Role::Assistant, "你好！👋")],
    )
    .await?;
    save(
        &history,
        "u1",
        &[(Role::User, "second"), (Role::Assistant, "reply two")],
    )
    .await?;
    save(&history, "u2", &[(Role::User, "someone else")]).await?;

    let cold = list(&history, "u1", 0).await?;
    assert!(!cold.from_cache);
    assert_eq!(
        texts(&cold),
        ["你好，世界 🌏", "你好！👋", "second", "reply two"]
    );
    let roles: Vec<Role> = cold.messages.iter().map(|m| m.role()).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::User, Role::Assistant]
    );

    let warm = list(&history, "u1", 0).await?;
    assert!(warm.from_cache);
    assert_eq!(
        warm.messages, cold.messages,
        "cache and database agree to the millisecond"
    );

    // A save after the cache was filled shows up in the cached answer.
    save(&history, "u1", &[(Role::User, "third")]).await?;
    let after = list(&history, "u1", 2).await?;
    assert!(after.from_cache);
    assert_eq!(texts(&after), ["reply two", "third"]);
    assert_eq!(texts(&list(&history, "u2", 0).await?), ["someone else"]);
    Ok(())
}

#[tokio::test]
async fn the_cache_keeps_the_newest_forty_in_step_with_mysql() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db, &redis)).await?;
    save(&history, "u1", &[(Role::User, "m0")]).await?;
    list(&history, "u1", 0).await?; // fills the cache
    for i in 1..50 {
        save(&history, "u1", &[(Role::User, &format!("m{i}"))]).await?;
    }
    let cached = list(&history, "u1", 40).await?;
    assert!(cached.from_cache);
    let from_mysql = list(&history, "u1", 41).await?;
    assert!(
        !from_mysql.from_cache,
        "more than the cache holds reads MySQL"
    );
    assert_eq!(cached.messages[..], from_mysql.messages[1..]);
    assert_eq!(texts(&cached).first(), Some(&"m10"));
    assert_eq!(texts(&cached).last(), Some(&"m49"));
    Ok(())
}

#[tokio::test]
async fn migrations_are_idempotent_and_upgrade_the_original_table() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let pool = mysql_async::Pool::new(chat_history::mysql_opts(&db.url)?);
    let mut connection = support::original_table_with(
        &pool,
        "INSERT INTO chat_history (user_id, role, text) VALUES ('u1', 'user', 'old message')",
    )
    .await?;
    let history = History::connect(&settings(&db, &redis)).await?;
    assert_eq!(
        chat_history::migrate(&pool).await?,
        0,
        "second run does nothing"
    );
    save(&history, "u1", &[(Role::User, "新消息 🚀")]).await?;
    assert_eq!(
        texts(&list(&history, "u1", 0).await?),
        ["old message", "新消息 🚀"]
    );
    let charset: Option<String> = connection
        .query_first(
            "SELECT character_set_name FROM information_schema.columns
             WHERE table_schema = DATABASE() AND table_name = 'chat_history' AND column_name = 'text'",
        )
        .await?;
    assert_eq!(charset.as_deref(), Some("utf8mb4"));
    drop(connection);
    pool.disconnect().await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db, &redis)).await?;
    let code = |result: anyhow::Result<_>| {
        result
            .err()
            .and_then(|error| error.downcast::<tonic::Status>().ok())
            .map(|status| status.code())
    };
    assert_eq!(
        code(save(&history, "bad user", &[(Role::User, "x")]).await),
        Some(tonic::Code::InvalidArgument)
    );
    assert_eq!(
        code(save(&history, "u1", &[]).await),
        Some(tonic::Code::InvalidArgument)
    );
    assert_eq!(
        code(save(&history, "u1", &[(Role::System, "x")]).await),
        Some(tonic::Code::InvalidArgument)
    );
    let listed = list(&history, &"x".repeat(65), 0).await.err();
    let listed = listed.and_then(|error| error.downcast::<tonic::Status>().ok());
    assert_eq!(
        listed.map(|status| status.code()),
        Some(tonic::Code::InvalidArgument)
    );
    Ok(())
}

#[tokio::test]
async fn an_incomplete_reply_stays_marked_in_mysql_and_in_the_cache() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db, &redis)).await?;
    let messages = vec![
        NewMessage {
            role: Role::User.into(),
            text: "tell me a long story".into(),
            incomplete: false,
        },
        NewMessage {
            role: Role::Assistant.into(),
            text: "Once upon a".into(),
            incomplete: true,
        },
    ];
    history
        .save(Request::new(SaveRequest {
            user_id: "u1".into(),
            messages,
            ..SaveRequest::default()
        }))
        .await?;
    for expect_cache in [false, true] {
        let listed = list(&history, "u1", 0).await?;
        assert_eq!(listed.from_cache, expect_cache);
        let flags: Vec<bool> = listed.messages.iter().map(|m| m.incomplete).collect();
        assert_eq!(flags, [false, true]);
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_saves_are_group_committed_without_mixing_anything_up() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&Settings {
        history_writers: 2,
        ..settings(&db, &redis)
    })
    .await?;
    let saves = (0..60).map(|i| {
        let history = history.clone();
        async move {
            let user = format!("user{}", i % 6);
            let question = format!("question {i}");
            let answer = format!("answer {i}");
            let ids = save(
                &history,
                &user,
                &[(Role::User, &question), (Role::Assistant, &answer)],
            )
            .await?;
            anyhow::Ok((user, i, ids))
        }
    });
    let saved = futures::future::try_join_all(saves).await?;
    let mut all_ids: Vec<i64> = saved.iter().flat_map(|(_, _, ids)| ids.clone()).collect();
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), 120, "every message got an id of its own");
    for (user, i, ids) in &saved {
        assert_eq!(
            ids[1],
            ids[0] + 1,
            "a save's messages stay together and in order"
        );
        let listed = list(&history, user, 200).await?;
        let position = listed
            .messages
            .iter()
            .position(|message| message.id == ids[0])
            .ok_or_else(|| anyhow::anyhow!("save {i} of {user} not listed"))?;
        assert_eq!(listed.messages[position].text, format!("question {i}"));
        assert_eq!(listed.messages[position + 1].text, format!("answer {i}"));
    }
    Ok(())
}

/// User ids are exact everywhere: Redis keys are, and so are accounts ("Alice" and
/// "alice" may be two users). MySQL must not hand one user's messages to the other.
#[tokio::test]
async fn ids_differing_in_case_are_different_users() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db, &redis)).await?;
    save(&history, "alice", &[(Role::User, "alice's secret")]).await?;
    for limit in [0, 200] {
        // 200 is past the cache's size: read from MySQL directly.
        let other = list(&history, "ALICE", limit).await?;
        assert!(texts(&other).is_empty(), "{limit}: {:?}", texts(&other));
    }
    assert_eq!(
        texts(&list(&history, "alice", 0).await?),
        ["alice's secret"]
    );
    Ok(())
}
