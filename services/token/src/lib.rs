//! Token service (:50051): each user's daily token quota, in Redis.
//!
//! A chat first *reserves* an estimate of its cost, then *settles* the reservation to
//! the provider's real `usage.total_tokens` (0 refunds it). Both are single Lua
//! scripts, so concurrent chats of one user can never spend past the limit, and a
//! reservation is settled exactly once however often the caller retries. Reservations
//! nobody settles (a gateway that crashed mid-chat) are refunded by a sweeper after
//! `RESERVATION_TTL_SECS`, unless the caller keeps them alive with `Extend` (a long
//! stream does); a settlement that comes after the sweeper still charges, once, from the
//! tombstone the sweeper left. A settlement Redis cannot take is journalled durably in
//! `SETTLEMENT_JOURNAL_DIR` and applied when Redis is back.
//!
//! The prompt's part of a reservation is scaled per model by what the provider reported
//! for earlier prompts of that model (`calibration:<model>`): a provider whose tokenizer
//! counts more than ours would otherwise let concurrent chats spend past the limit.
//!
//! Keys, all under `REDIS_KEY_PREFIX`: `token:{user}:{yyyy-mm-dd}` the day's spending
//! (expiry set once, 48 h); `reservation:{user}:{id}` one open reservation (or its
//! tombstone); `reservations:{user}:pending` the user's open reservations by deadline;
//! `reservations:due` the users the sweeper must visit; `calibration:<model>`.
//!
//! The limit is `DAILY_LIMIT`, or the user's own when the caller sends `daily_limit`
//! (the gateway does, from the account). A reservation keeps the limit it was made
//! under, so its settlement reports the tokens left against the same limit.
//!
//! The rules are in `quota.rs` and the modules under `quota/`; `service.rs` is the gRPC edge over them.

mod error;
mod journal;
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

/// How often the settlement journal is looked at for settlements to apply.
const JOURNAL_REPLAY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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
    let replayer = tokio::spawn(quota.clone().replay_forever(JOURNAL_REPLAY_INTERVAL));
    let stopping = chat_common::shutdown::Shutdown::new(settings.shutdown_grace_secs);
    let (reporter, health) = chat_common::grpc::health();
    // Ready while Redis answers a PING (on a connection of its own, so a pool busy
    // with chats does not make it look down).
    let redis = chat_common::redis::pool(
        &settings.redis_addr,
        1,
        std::time::Duration::from_millis(settings.redis_timeout_ms),
    )?;
    chat_common::readiness::spawn(
        reporter,
        &[chat_proto::token_service_server::SERVICE_NAME],
        stopping.clone(),
        move || {
            let redis = redis.clone();
            async move { chat_common::readiness::redis_ping(&redis).await }
        },
    )
    .await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(TokenServiceServer::new(quota));
    let served = chat_common::grpc::serve(router, listener, shutdown, &stopping).await;
    sweeper.abort();
    replayer.abort();
    served
}
