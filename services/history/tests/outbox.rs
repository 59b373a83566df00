//! Saves while MySQL is away: queued in the outbox in Redis, shown by reads meanwhile,
//! written exactly once and in order when MySQL is back. MySQL here is a MariaDB server
//! of the test's own (a real process it pauses and kills), never the shared one.

use std::time::Duration;

use chat_history::{History, Settings};
use chat_proto::history_service_server::HistoryService;
use chat_proto::{
    LatestConversationRequest, ListConversationMessagesRequest, ListRequest, ListResponse,
    NewMessage, Role, SaveRequest, SaveResponse,
};
use chat_testing::{OwnMariadb, TestDatabase, TestRedis};
use mysql_async::prelude::Queryable;
use tonic::Request;

fn settings(mysql_url: &str, redis: &TestRedis) -> Settings {
    Settings {
        mysql_dsn: mysql_url.to_owned().into(),
        redis_addr: redis.addr.clone(),
        redis_key_prefix: redis.prefix.clone(),
        store_timeout_ms: 1000,
        history_save_timeout_ms: 300,
        ..Settings::default()
    }
}

fn turn(question: &str, answer: &str) -> Vec<NewMessage> {
    [(Role::User, question), (Role::Assistant, answer)]
        .into_iter()
        .map(|(role, text)| NewMessage {
            role: role.into(),
            text: text.into(),
            incomplete: false,
        })
        .collect()
}

async fn save(
    history: &History,
    conversation_id: &str,
    request_id: &str,
    messages: Vec<NewMessage>,
) -> anyhow::Result<SaveResponse> {
    let request = SaveRequest {
        user_id: "ann".into(),
        messages,
        conversation_id: conversation_id.into(),
        request_id: request_id.into(),
        ..SaveRequest::default()
    };
    Ok(history.save(Request::new(request)).await?.into_inner())
}

async fn list(history: &History, conversation_id: &str) -> anyhow::Result<ListResponse> {
    let request = ListRequest {
        user_id: "ann".into(),
        limit: 20,
        conversation_id: conversation_id.into(),
        ..ListRequest::default()
    };
    Ok(history.list(Request::new(request)).await?.into_inner())
}

fn texts(response: &ListResponse) -> Vec<&str> {
    response.messages.iter().map(|m| m.text.as_str()).collect()
}

/// The user's messages as MySQL has them, by id.
async fn in_mysql(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(url)?);
    let mut connection = pool.get_conn().await?;
    let rows = connection
        .query("SELECT text, conversation_id FROM chat_history WHERE user_id = 'ann' ORDER BY id")
        .await?;
    drop(connection);
    pool.disconnect().await?;
    Ok(rows)
}

/// Waits until reads show no provisional (negative) ids: the outbox is drained.
async fn drained(history: &History, conversation_id: &str) -> anyhow::Result<ListResponse> {
    for _ in 0..600 {
        if let Ok(listed) = list(history, conversation_id).await
            && listed.messages.iter().all(|message| message.id > 0)
        {
            return Ok(listed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the outbox was not drained within 60 s")
}

#[tokio::test]
async fn saves_while_mysql_is_paused_are_queued_shown_and_written_once_in_order()
-> anyhow::Result<()> {
    let mariadb = OwnMariadb::start(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).await?;
    let redis = TestRedis::new().await?;
    let url = mariadb.url("chatdb");
    let history = History::connect(&settings(&url, &redis)).await?;

    let first = save(&history, "", "turn-1", turn("one?", "One.")).await?;
    assert!(!first.pending, "mysql is up: saved directly");
    let conversation = first.conversation_id.clone();
    assert_eq!(
        texts(&list(&history, &conversation).await?),
        ["one?", "One."]
    );
    assert_eq!(texts(&list(&history, "").await?), ["one?", "One."]);

    mariadb.pause().await?;
    let second = save(&history, &conversation, "turn-2", turn("two?", "Two.")).await?;
    assert!(second.pending, "mysql is paused: queued");
    assert!(second.ids.is_empty());
    assert_eq!(second.conversation_id, conversation);
    let third = save(&history, &conversation, "turn-3", turn("three?", "Three.")).await?;
    assert!(third.pending);
    // A retry of the third (its answer lost on the way back) is queued once.
    let again = save(&history, &conversation, "turn-3", turn("three?", "Three.")).await?;
    assert!(again.pending);

    // Read your own writes: the conversation, the user's list, and where a chat naming
    // no conversation goes.
    let shown = list(&history, &conversation).await?;
    assert_eq!(
        texts(&shown),
        ["one?", "One.", "two?", "Two.", "three?", "Three."]
    );
    assert!(shown.messages[2..].iter().all(|message| message.id < 0));
    assert_eq!(texts(&list(&history, "").await?).len(), 6);
    let latest = history
        .latest_conversation(Request::new(LatestConversationRequest {
            user_id: "ann".into(),
        }))
        .await?
        .into_inner();
    assert_eq!(latest.id, conversation);
    let page = history
        .list_conversation_messages(Request::new(ListConversationMessagesRequest {
            user_id: "ann".into(),
            conversation_id: conversation.clone(),
            ..ListConversationMessagesRequest::default()
        }))
        .await?
        .into_inner();
    let page_texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        page_texts,
        ["one?", "One.", "two?", "Two.", "three?", "Three."],
        "the conversation view, from the cache, while MySQL is paused"
    );

    mariadb.resume().await?;
    let listed = drained(&history, &conversation).await?;
    assert_eq!(
        texts(&listed),
        ["one?", "One.", "two?", "Two.", "three?", "Three."]
    );
    let stored = in_mysql(&url).await?;
    let stored_texts: Vec<&str> = stored.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(
        stored_texts,
        ["one?", "One.", "two?", "Two.", "three?", "Three."],
        "every message once, in order"
    );
    assert!(stored.iter().all(|(_, id)| *id == conversation));

    // MySQL back: saves go straight to it again.
    let fourth = save(&history, &conversation, "turn-4", turn("four?", "Four.")).await?;
    assert!(!fourth.pending);
    assert_eq!(fourth.ids.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_chat_in_a_new_conversation_while_mysql_is_down_gets_it_made_when_mysql_is_back()
-> anyhow::Result<()> {
    chat_common::telemetry::init_for_tests();
    let mut mariadb = OwnMariadb::start(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).await?;
    let redis = TestRedis::new().await?;
    let url = mariadb.url("chatdb");
    let history = History::connect(&settings(&url, &redis)).await?;

    mariadb.kill().await?;
    let queued = save(&history, "", "new-1", turn("hello?", "Hello.")).await?;
    assert!(queued.pending);
    let conversation = queued.conversation_id.clone();
    assert!(
        !conversation.is_empty(),
        "the new conversation has its id already"
    );
    assert_eq!(
        texts(&list(&history, &conversation).await?),
        ["hello?", "Hello."],
        "shown from the outbox while MySQL is down"
    );

    mariadb.restart().await?;
    let listed = drained(&history, &conversation).await?;
    assert_eq!(texts(&listed), ["hello?", "Hello."]);
    let stored = in_mysql(&url).await?;
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|(_, id)| *id == conversation));
    Ok(())
}

#[tokio::test]
async fn a_save_repeated_under_its_request_id_is_stored_once() -> anyhow::Result<()> {
    let (db, redis) = (TestDatabase::new().await?, TestRedis::new().await?);
    let history = History::connect(&settings(&db.url, &redis)).await?;
    let first = save(&history, "", "same-request", turn("q?", "A.")).await?;
    let conversation = first.conversation_id.clone();
    let (again, at_once) = tokio::join!(
        save(&history, &conversation, "same-request", turn("q?", "A.")),
        save(&history, &conversation, "same-request", turn("q?", "A.")),
    );
    assert_eq!(
        again?.ids, first.ids,
        "a retry answers the first save's ids"
    );
    assert_eq!(at_once?.ids, first.ids);
    assert_eq!(in_mysql(&db.url).await?.len(), 2);
    assert_eq!(texts(&list(&history, &conversation).await?), ["q?", "A."]);

    let refused = save(&history, &conversation, "not a valid id!", turn("q?", "A.")).await;
    assert!(refused.is_err(), "a request id with spaces is refused");
    Ok(())
}
