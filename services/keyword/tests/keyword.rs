//! The keyword index against a real MySQL-protocol server, fed by the real history
//! service's saves (and its migrations, which create the index's tables).

use chat_history::History;
use chat_keyword::{Index, Settings};
use chat_proto::history_service_server::HistoryService;
use chat_proto::keyword_service_server::KeywordService;
use chat_proto::{ReindexRequest, Role, SearchHit, SearchRequest};
use chat_testing::history::save_request;
use chat_testing::{TestDatabase, TestRedis};
use mysql_async::prelude::Queryable;
use tonic::Request;

struct Fixture {
    history: History,
    index: Index,
    db: TestDatabase,
    _redis: TestRedis,
}

async fn fixture() -> anyhow::Result<Fixture> {
    let db = TestDatabase::new().await?;
    let redis = TestRedis::new().await?;
    let history = History::connect(&chat_history::Settings {
        mysql_dsn: db.url.clone().into(),
        redis_addr: redis.addr.clone(),
        redis_key_prefix: redis.prefix.clone(),
        // Saves slower than the default 500 ms would go to the outbox on a busy machine,
        // out of the indexer's sight until drained: not what these tests are about.
        history_save_timeout_ms: 5000,
        ..chat_history::Settings::default()
    })
    .await?;
    let index = chat_keyword::connect(&Settings {
        mysql_dsn: db.url.clone().into(),
        keyword_index_batch: 50,
        ..Settings::default()
    })
    .await?;
    Ok(Fixture {
        history,
        index,
        db,
        _redis: redis,
    })
}

impl Fixture {
    /// Saves one exchange of `user` through the history service; returns the ids.
    async fn say(&self, user: &str, text: &str, reply: &str) -> anyhow::Result<Vec<i64>> {
        let turns = [(Role::User, text), (Role::Assistant, reply)];
        Ok(self
            .history
            .save(Request::new(save_request(user, &turns)))
            .await?
            .into_inner()
            .ids)
    }

    /// Indexes until nothing new is left; returns how many messages were indexed.
    async fn catch_up(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            match self.index.index_new().await? {
                0 => return Ok(total),
                indexed => total += indexed,
            }
        }
    }

    async fn search(&self, user: &str, query: &str) -> anyhow::Result<Vec<SearchHit>> {
        self.search_with(user, query, false).await
    }

    async fn search_with(
        &self,
        user: &str,
        query: &str,
        skip_common_terms: bool,
    ) -> anyhow::Result<Vec<SearchHit>> {
        self.search_request(SearchRequest {
            user_id: user.into(),
            query: query.into(),
            skip_common_terms,
            ..SearchRequest::default()
        })
        .await
    }

    async fn search_request(&self, request: SearchRequest) -> anyhow::Result<Vec<SearchHit>> {
        Ok(KeywordService::search(&self.index, Request::new(request))
            .await?
            .into_inner()
            .hits)
    }

    async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&self.db.url)?);
        let mut conn = pool.get_conn().await?;
        let count: Option<i64> = conn.query_first(sql).await?;
        drop(conn);
        pool.disconnect().await?;
        Ok(count.unwrap_or_default())
    }
}

/// Sixty ordinary turns, none about pets.
async fn small_talk(fixture: &Fixture, user: &str) -> anyhow::Result<()> {
    for turn in 0..30 {
        fixture
            .say(
                user,
                &format!("Turn {turn}: the weather is mild and I had coffee number {turn} at work"),
                &format!("Noted, coffee {turn}. 今天天气不错，工作顺利。"),
            )
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_fact_sixty_turns_back_is_found_in_english_and_in_chinese() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    let english = fixture
        .say(
            "u1",
            "My dog's name is Biscuit.",
            "What a lovely name for a dog!",
        )
        .await?;
    let chinese = fixture
        .say("u1", "我的猫叫豆豆", "豆豆是个可爱的名字。")
        .await?;
    small_talk(&fixture, "u1").await?;
    assert_eq!(fixture.catch_up().await?, 64);

    let hits = fixture.search("u1", "What is my dog called?").await?;
    assert!(
        hits.iter().take(2).any(|hit| hit.message_id == english[0]),
        "{hits:#?}"
    );
    let first = &hits[0];
    let chars: Vec<char> = first.text.chars().collect();
    let marked: Vec<String> = first
        .highlights
        .iter()
        .map(|range| {
            chars[range.start as usize..range.end as usize]
                .iter()
                .collect()
        })
        .collect();
    assert!(
        marked.iter().any(|piece| piece.eq_ignore_ascii_case("dog")),
        "{marked:?}"
    );
    // Retrieval's searches ask for none: the same hits, unmarked.
    let unmarked = fixture
        .search_request(SearchRequest {
            user_id: "u1".into(),
            query: "What is my dog called?".into(),
            without_highlights: true,
            ..SearchRequest::default()
        })
        .await?;
    assert_eq!(
        unmarked
            .iter()
            .map(|hit| hit.message_id)
            .collect::<Vec<_>>(),
        hits.iter().map(|hit| hit.message_id).collect::<Vec<_>>()
    );
    assert!(unmarked.iter().all(|hit| hit.highlights.is_empty()));

    let hits = fixture.search("u1", "我的猫叫什么名字？").await?;
    assert_eq!(hits[0].message_id, chinese[0], "{hits:#?}");
    assert_eq!(hits[0].role(), Role::User);
    Ok(())
}

#[tokio::test]
async fn another_users_messages_are_never_found() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    fixture
        .say("alice", "My dog is named Biscuit", "Nice")
        .await?;
    fixture.say("bob", "My dog is named Rex", "Nice").await?;
    fixture.catch_up().await?;
    for (user, own, other) in [("alice", "Biscuit", "Rex"), ("bob", "Rex", "Biscuit")] {
        let hits = fixture.search(user, "dog named").await?;
        assert!(hits.iter().any(|hit| hit.text.contains(own)), "{hits:#?}");
        assert!(
            hits.iter().all(|hit| !hit.text.contains(other)),
            "{hits:#?}"
        );
        assert!(fixture.search(user, other).await?.is_empty());
    }
    assert!(fixture.search("carol", "dog").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn deleted_messages_are_never_found_and_are_swept_from_the_index() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    let gone = fixture.say("u1", "The vault code is 4711", "Noted").await?;
    let kept = fixture
        .say("u1", "The garage code is 1234", "Noted")
        .await?;
    fixture.catch_up().await?;
    assert_eq!(fixture.search("u1", "code").await?.len(), 2);

    // What deleting a conversation or erasing the history does to the rows.
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&fixture.db.url)?);
    let mut conn = pool.get_conn().await?;
    conn.exec_drop(
        "DELETE FROM chat_history WHERE id IN (?, ?)",
        (gone[0], gone[1]),
    )
    .await?;
    drop(conn);
    pool.disconnect().await?;

    let hits = fixture.search("u1", "vault code").await?;
    assert!(
        hits.iter().all(|hit| !gone.contains(&hit.message_id)),
        "{hits:#?}"
    );
    assert!(hits.iter().any(|hit| hit.message_id == kept[0]));

    let (_, swept) = fixture.index.sweep(0).await?;
    assert_eq!(swept, 2);
    let postings = format!(
        "SELECT COUNT(*) FROM keyword_postings WHERE message_id IN ({}, {})",
        gone[0], gone[1]
    );
    assert_eq!(fixture.count(&postings).await?, 0);
    assert_eq!(
        fixture
            .count("SELECT docs FROM keyword_users WHERE user_id = 'u1'")
            .await?,
        2
    );
    let term_docs =
        "SELECT COALESCE(SUM(docs), 0) FROM keyword_terms WHERE user_id = 'u1' AND term =";
    assert_eq!(fixture.count(&format!("{term_docs} 'vault'")).await?, 0);
    assert_eq!(fixture.count(&format!("{term_docs} 'code'")).await?, 1);
    Ok(())
}

#[tokio::test]
async fn replicas_indexing_at_once_index_each_message_once() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    small_talk(&fixture, "u1").await?;
    let other = chat_keyword::connect(&Settings {
        mysql_dsn: fixture.db.url.clone().into(),
        keyword_index_batch: 7,
        ..Settings::default()
    })
    .await?;
    let (first, second) = tokio::join!(fixture.catch_up(), async {
        let mut total = 0;
        loop {
            match other.index_new().await? {
                0 => return Ok::<_, anyhow::Error>(total),
                indexed => total += indexed,
            }
        }
    });
    assert_eq!(first? + second?, 60);
    assert_eq!(
        fixture.count("SELECT COUNT(*) FROM keyword_docs").await?,
        60
    );
    assert_eq!(
        fixture
            .count("SELECT docs FROM keyword_users WHERE user_id = 'u1'")
            .await?,
        60
    );

    // Two indexer loops: one takes the lock and indexes what comes next; the totals stay exact.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut loops = Vec::new();
    for index in [fixture.index.clone(), other.clone()] {
        let mut stopped = stopped.clone();
        loops.push(tokio::spawn(index.run(
            std::time::Duration::from_millis(50),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }
    fixture
        .say("u1", "A message after the loops started", "ok")
        .await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while fixture.count("SELECT COUNT(*) FROM keyword_docs").await? < 62 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the indexer loop indexed nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.send(true)?;
    for handle in loops {
        handle.await?;
    }
    assert_eq!(
        fixture
            .count("SELECT docs FROM keyword_users WHERE user_id = 'u1'")
            .await?,
        62
    );
    Ok(())
}

#[tokio::test]
async fn reindex_rebuilds_a_users_index_from_the_history() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    fixture
        .say("u1", "Rust ownership and borrowing", "Yes")
        .await?;
    fixture.say("u2", "Rust lifetimes", "Yes").await?;
    fixture.catch_up().await?;
    let before = fixture
        .count("SELECT COUNT(*) FROM keyword_postings")
        .await?;

    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&fixture.db.url)?);
    let mut conn = pool.get_conn().await?;
    conn.query_drop("DELETE FROM keyword_postings WHERE user_id = 'u1'")
        .await?;
    drop(conn);
    pool.disconnect().await?;
    assert!(fixture.search("u1", "borrowing").await?.is_empty());

    let reindexed = KeywordService::reindex(
        &fixture.index,
        Request::new(ReindexRequest {
            user_id: "u1".into(),
        }),
    )
    .await?
    .into_inner()
    .messages;
    assert_eq!(reindexed, 2);
    assert_eq!(fixture.search("u1", "borrowing").await?.len(), 1);
    assert_eq!(
        fixture
            .count("SELECT COUNT(*) FROM keyword_postings")
            .await?,
        before
    );
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    for (user, query) in [("u1", "   ?? "), ("", "dog"), ("u1", "the of and")] {
        let answer = KeywordService::search(
            &fixture.index,
            Request::new(SearchRequest {
                user_id: user.into(),
                query: query.into(),
                ..SearchRequest::default()
            }),
        )
        .await;
        let code = answer
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|status| status.code());
        assert_eq!(code, tonic::Code::InvalidArgument, "{query:?}");
    }
    Ok(())
}

const ZANZIBAR: &str = "The meeting with Zanzibar Shipping moved to Friday";

/// `turns` exchanges of u1 about meetings, every message with the word "meeting".
async fn meeting_notes(fixture: &Fixture, turns: usize) -> anyhow::Result<()> {
    for turn in 0..turns {
        fixture
            .say(
                "u1",
                &format!("Meeting notes {turn}: nothing new"),
                &format!("meeting {turn} noted"),
            )
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_rare_word_is_found_among_many_messages_sharing_a_common_one() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    let fact = fixture.say("u1", ZANZIBAR, "Noted").await?;
    // More messages with "meeting" than a search reads per term.
    meeting_notes(&fixture, 60).await?;
    fixture.catch_up().await?;
    let hits = fixture
        .search("u1", "When is the meeting with Zanzibar?")
        .await?;
    assert_eq!(
        hits.first().map(|hit| hit.message_id),
        Some(fact[0]),
        "{hits:#?}"
    );
    Ok(())
}

#[tokio::test]
async fn retrieval_leaves_out_words_most_of_a_users_messages_share() -> anyhow::Result<()> {
    let fixture = fixture().await?;
    let fact = fixture.say("u1", ZANZIBAR, "Noted").await?;
    meeting_notes(&fixture, 10).await?;
    fixture.catch_up().await?;
    let meeting = "SELECT docs FROM keyword_terms WHERE user_id = 'u1' AND term = 'meeting'";
    assert_eq!(fixture.count(meeting).await?, 21);

    // "meeting" is in 21 of the 22 messages: it tells none apart, so retrieval reads
    // nothing for it, while a person searching for it still finds the newest.
    assert!(fixture.search_with("u1", "meeting", true).await?.is_empty());
    assert_eq!(fixture.search("u1", "meeting").await?.len(), 10);
    let hits = fixture
        .search_with("u1", "the meeting with Zanzibar?", true)
        .await?;
    let ids: Vec<i64> = hits.iter().map(|hit| hit.message_id).collect();
    assert_eq!(ids, [fact[0]]);
    Ok(())
}
