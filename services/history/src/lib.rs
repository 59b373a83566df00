//! History service (:50054): every message in MySQL, in the user's conversations; the
//! most recent ones of each user, and of each conversation, cached in Redis.
//!
//! `Save` writes MySQL first (the source of truth), then appends to the cached lists if
//! there are any. `List` answers oldest first whether it read the cache or MySQL; a miss
//! refills the cache. A per-user version counter keeps a refill that raced a save from
//! caching a list without the saved messages. The schema is created and upgraded by the
//! versioned migrations in `deploy/mysql/migrations` at start.
//!
//! Exactly once: a save carries the caller's request id, and each of its rows a key
//! made from it, unique per user in MySQL, so a retry adds nothing (`writer.rs`). When
//! MySQL is down, hung or slow, a save goes to a durable outbox in Redis instead and is
//! answered `pending`; reads show it meanwhile, and the drainer writes it, in order and
//! once, when MySQL is back (`outbox.rs`, `drain.rs`).
//!
//! The request path is `store/` (saves in `store/save.rs`, reads in `store/read.rs`),
//! conversations are `conversations/`; `service.rs` is the gRPC edge over them.
//!
//! The same server answers the `AccountService` (users, API keys, logins, sessions),
//! since this service already owns MySQL and Redis: see `accounts/`.

mod accounts;
mod breaker;
mod cache;
mod conversations;
mod drain;
mod dsn;
mod error;
mod metrics;
mod migrations;
mod outbox;
mod readiness;
mod service;
mod settings;
mod store;
mod writer;

use std::future::Future;

use chat_proto::account_service_server::AccountServiceServer;
use chat_proto::history_service_server::HistoryServiceServer;
use tokio::net::TcpListener;

pub use accounts::{AccountError, Accounts};
pub use dsn::{Statements, mysql_opts, mysql_pool};
pub use error::HistoryError;
pub use migrations::migrate;
pub use readiness::{mysql_ping, mysql_ping_pool};
pub use settings::Settings;
pub use store::History;

/// Migrates the schema, then serves history and accounts on `listener` until
/// `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.history_metrics_listen).await?;
    metrics::register();
    let history = History::connect(&settings).await?;
    let accounts = Accounts::new(&settings, &history).await?;
    let stopping = chat_common::shutdown::Shutdown::new(settings.shutdown_grace_secs);
    let (reporter, health) = chat_common::grpc::health();
    chat_common::readiness::spawn(
        reporter,
        &[
            chat_proto::history_service_server::SERVICE_NAME,
            chat_proto::account_service_server::SERVICE_NAME,
        ],
        stopping.clone(),
        readiness::check(&settings)?,
    )
    .await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(HistoryServiceServer::new(history.clone()))
        .add_service(AccountServiceServer::new(accounts));
    let served = chat_common::grpc::serve(router, listener, shutdown, &stopping).await;
    history.close().await;
    served
}
