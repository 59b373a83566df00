//! Token service (:50051): each user's daily token quota, in Redis.
//!
//! A chat first *reserves* an estimate of its cost, then *settles* the reservation to
//! the provider's real `usage.total_tokens` (0 refunds it). Both are single Lua
//! scripts, so concurrent chats of one user can never spend past the limit, and a
//! reservation is settled exactly once however often the caller retries. Reservations
//! nobody settles (a gateway that crashed mid-chat) are refunded by a sweeper after
//! `RESERVATION_TTL_SECS`.
//!
//! Keys, all under `REDIS_KEY_PREFIX`: `token:{user}:{yyyy-mm-dd}` the day's spending
//! (expiry set once, 48 h); `reservation:{user}:{id}` one open reservation;
//! `reservations:pending` the open reservations by deadline.
//!
//! The limit is `DAILY_LIMIT`, or the user's own when the caller sends `daily_limit`
//! (the gateway does, from the account). A reservation keeps the limit it was made
//! under, so its settlement reports the tokens left against the same limit.
//!
//! The rules are in `quota.rs`; `service.rs` is the gRPC edge over them.

mod error;
mod metrics;
mod quota;
mod service;
mod settings;

use std::future::Future;

use chat_proto::token_service_server::TokenServiceServer;
use tokio::net::TcpListener;

pub use error::QuotaError;
pub use quota::Quota;
pub use settings::Settings;

/// Serves the quota on `listener` until `shutdown` resolves; sweeps abandoned
/// reservations meanwhile.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.token_metrics_listen).await?;
    metrics::register();
    let quota = Quota::new(&settings)?;
    tracing::info!(
        daily_limit = settings.daily_limit,
        timezone = %settings.quota_timezone,
        "token service ready"
    );
    let sweeper = tokio::spawn(
        quota
            .clone()
            .sweep_forever(std::time::Duration::from_millis(settings.sweep_interval_ms)),
    );
    let (reporter, health) = chat_common::grpc::health();
    reporter.set_serving::<TokenServiceServer<Quota>>().await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(TokenServiceServer::new(quota));
    let served = chat_common::grpc::serve(router, listener, shutdown).await;
    sweeper.abort();
    served
}
