//! The cache's scripts on a Redis Cluster: every key a script touches is hash-tagged by
//! user (and declared, but the list `latest.lua` finds by its pointer), so none fails
//! with CROSSSLOT.

use chat_history::{History, Settings};
use chat_proto::history_service_server::HistoryService;
use chat_proto::{ListRequest, NewMessage, Role, SaveRequest};
use chat_testing::{OwnRedis, TestDatabase};
use tonic::Request;

#[tokio::test]
async fn saves_and_refills_run_on_a_redis_cluster() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let cluster = OwnRedis::start_cluster().await?;
    let history = History::connect(&Settings {
        mysql_dsn: db.url.clone().into(),
        redis_addr: cluster.addr(),
        redis_key_prefix: "chat:".to_owned(),
        history_cache_size: 40,
        ..Settings::default()
    })
    .await?;
    let list = async |history: &History| -> anyhow::Result<Vec<String>> {
        Ok(history
            .list(Request::new(ListRequest {
                user_id: "alice".into(),
                limit: 10,
                ..ListRequest::default()
            }))
            .await?
            .into_inner()
            .messages
            .into_iter()
            .map(|message| message.text)
            .collect())
    };
    // A miss refills the list (version, then refill), a save appends (append).
    assert!(list(&history).await?.is_empty());
    for text in ["one", "two"] {
        history
            .save(Request::new(SaveRequest {
                user_id: "alice".into(),
                messages: vec![NewMessage {
                    role: Role::User.into(),
                    text: text.into(),
                    incomplete: false,
                }],
                ..SaveRequest::default()
            }))
            .await?;
        assert_eq!(list(&history).await?.last().map(String::as_str), Some(text));
    }
    // Read from the cache, kept in the user's one slot.
    let pool = chat_common::redis::pool(&cluster.addr(), 1, std::time::Duration::from_secs(2))?;
    let mut connection = pool.get().await?;
    let cached: i64 = redis::cmd("LLEN")
        .arg("chat:history:{alice}")
        .query_async(&mut connection)
        .await?;
    assert_eq!(
        cached, 2,
        "the script errors would have left no cached list"
    );
    assert_eq!(list(&history).await?, ["one", "two"]);
    // The latest conversation (each save above started one) and its list in one
    // script: the list's key is not declared (the pointer names it) but shares the
    // user's slot. The first read fills the list, the second finds it.
    for cached in [false, true] {
        let latest = history
            .list(Request::new(ListRequest {
                user_id: "alice".into(),
                limit: 10,
                latest_conversation: true,
                ..ListRequest::default()
            }))
            .await?
            .into_inner();
        assert_eq!(latest.from_cache, cached, "{latest:?}");
        assert!(!latest.conversation_id.is_empty());
        let texts: Vec<&str> = latest.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["two"]);
    }
    // The script itself, so that a failure cannot hide behind the fallback to MySQL.
    let (pointed, cached): (String, Vec<String>) =
        redis::Script::new(include_str!("../src/scripts/latest.lua"))
            .key("chat:history:{alice}:latest")
            .arg("chat:history:{alice}#")
            .arg(10)
            .invoke_async(&mut connection)
            .await?;
    assert!(!pointed.is_empty());
    assert_eq!(cached.len(), 1, "{cached:?}");
    Ok(())
}
