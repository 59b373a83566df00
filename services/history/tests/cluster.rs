//! The cache's scripts on a Redis Cluster: every key a script touches is declared and
//! hash-tagged by user, so none fails with CROSSSLOT.

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
    Ok(())
}
