//! Filter service (:50052): cleans a text and decides whether it may reach the model.
//!
//! Cleaning: Unicode NFKC, control and invisible formatting characters dropped,
//! whitespace collapsed (paragraph breaks kept), trimmed. Blocking: a configurable list
//! of words and phrases matched as whole words, case-insensitively, so `foo` blocks
//! "foo bar" but not "food"; Chinese and Japanese entries match inside running text,
//! since those scripts do not separate words with spaces.
//!
//! The verdict is made in `filter.rs`; `service.rs` is the gRPC edge over it. The
//! filter records no metrics of its own: the shared gRPC server layer counts and times
//! every call.

mod blocklist;
mod clean;
mod error;
mod filter;
mod service;
mod settings;

use std::future::Future;

use chat_proto::filter_service_server::FilterServiceServer;
use tokio::net::TcpListener;

pub use blocklist::Blocklist;
pub use clean::clean;
pub use error::FilterError;
pub use filter::Filter;
pub use settings::Settings;

/// Serves the filter on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.filter_metrics_listen).await?;
    let filter = Filter::new(&settings)?;
    tracing::info!(
        blocked_words = settings.blocked_words.len(),
        max_text_chars = settings.max_text_chars,
        "filter ready"
    );
    let stopping = chat_common::shutdown::Shutdown::new(settings.shutdown_grace_secs);
    let (reporter, health) = chat_common::grpc::health();
    // No dependency: ready until it drains.
    chat_common::readiness::spawn(
        reporter,
        &[chat_proto::filter_service_server::SERVICE_NAME],
        stopping.clone(),
        || async { Ok(()) },
    )
    .await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(FilterServiceServer::new(filter));
    chat_common::grpc::serve(router, listener, shutdown, &stopping).await
}
