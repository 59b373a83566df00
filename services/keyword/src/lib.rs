//! Keyword service (:50053): the keywords of a text, and each user's saved messages
//! searched by them, for the gateway's retrieval and `GET /search`.
//!
//! `terms.rs` turns text into terms (jieba for Chinese, words for the rest, stop words
//! out); `index.rs` keeps the inverted index in the history's MySQL, fed from the saved
//! messages by one replica at a time; `search.rs` ranks by BM25; `service.rs` is the gRPC
//! edge. The tables come from the history service's migrations (0007), which own the
//! schema; this service waits for them at start.

mod error;
mod index;
mod metrics;
mod search;
mod service;
mod settings;
mod stopwords;
mod terms;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::keyword_service_server::KeywordServiceServer;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

pub use error::KeywordError;
pub use index::Index;
pub use search::rank;
pub use settings::Settings;
pub use terms::{Analyzer, highlights};

/// The index over the MySQL of `settings`, once the tables exist.
pub async fn connect(settings: &Settings) -> anyhow::Result<Index> {
    let pool = chat_history::mysql_pool(
        settings.mysql_dsn.expose_secret(),
        16,
        chat_history::Statements::Reset,
    )?;
    wait_for_tables(&pool).await?;
    let analyzer = tokio::task::spawn_blocking({
        let dict = settings.keyword_dict.clone();
        move || Analyzer::new(&dict)
    })
    .await??;
    Ok(Index::new(
        pool,
        Arc::new(analyzer),
        Duration::from_millis(settings.store_timeout_ms),
        settings.keyword_index_batch,
    ))
}

/// Waits (up to 90 s) until the history service has created the index's tables.
async fn wait_for_tables(pool: &Pool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let found = async {
            let mut conn = pool.get_conn().await?;
            conn.query_first::<i64, _>(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = 'keyword_users'",
            )
            .await
        };
        match tokio::time::timeout(Duration::from_secs(5), found).await {
            Ok(Ok(Some(1))) => return Ok(()),
            Ok(Ok(_)) => tracing::info!("waiting for the history service to create the index"),
            Ok(Err(error)) => tracing::warn!(%error, "waiting for MySQL"),
            Err(_) => tracing::warn!("waiting for MySQL: no answer in 5 s"),
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the keyword tables did not appear within 90 s: is the history service migrating this database?"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serves the keyword service on `listener`, and runs the indexer beside it, until
/// `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.keyword_metrics_listen).await?;
    metrics::register();
    let index = connect(&settings).await?;
    tracing::info!("keyword index ready");
    let (stop_indexer, indexer_stopped) = tokio::sync::oneshot::channel::<()>();
    let indexer = tokio::spawn(index.clone().run(
        Duration::from_millis(settings.keyword_index_interval_ms),
        async {
            let _ = indexer_stopped.await;
        },
    ));
    let stopping = chat_common::shutdown::Shutdown::new(settings.shutdown_grace_secs);
    let (reporter, health) = chat_common::grpc::health();
    // Ready while its MySQL answers (pinged on a connection of its own).
    let mysql = chat_history::mysql_ping_pool(&settings.mysql_dsn)?;
    chat_common::readiness::spawn(
        reporter,
        &[chat_proto::keyword_service_server::SERVICE_NAME],
        stopping.clone(),
        move || {
            let mysql = mysql.clone();
            async move { chat_history::mysql_ping(&mysql).await }
        },
    )
    .await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(KeywordServiceServer::new(index.clone()));
    let served = chat_common::grpc::serve(router, listener, shutdown, &stopping).await;
    let _ = stop_indexer.send(());
    let _ = indexer.await;
    if let Err(error) = index.mysql.clone().disconnect().await {
        tracing::warn!(%error, "closing the mysql pool failed");
    }
    served
}
