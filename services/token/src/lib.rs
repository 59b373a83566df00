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

mod quota;

use std::future::Future;

use chat_proto::token_service_server::TokenServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;

pub use quota::Quota;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`TOKEN_LISTEN`).
    pub token_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`TOKEN_METRICS_LISTEN`; empty turns it off).
    pub token_metrics_listen: String,
    /// `host:port` or `redis://` URL (`REDIS_ADDR`).
    pub redis_addr: String,
    /// Prepended to every key, to share one Redis between deployments or tests.
    pub redis_key_prefix: String,
    /// Tokens each user may spend per day (`DAILY_LIMIT`).
    pub daily_limit: i64,
    /// IANA time zone whose midnight resets the quota (`QUOTA_TIMEZONE`).
    pub quota_timezone: String,
    /// Lifetime of a day's counter; longer than a day so late settlements still land.
    pub quota_key_ttl_secs: i64,
    /// After this long an unsettled reservation is refunded by the sweeper. Must exceed
    /// the longest chat (the gateway's LLM deadline plus its settlement retries).
    pub reservation_ttl_secs: i64,
    /// How often the sweeper looks for abandoned reservations.
    pub sweep_interval_ms: u64,
    /// Per-operation Redis timeout, so an outage answers promptly.
    pub redis_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_listen: "0.0.0.0:50051".to_owned(),
            token_metrics_listen: "0.0.0.0:9051".to_owned(),
            redis_addr: "localhost:6379".to_owned(),
            redis_key_prefix: String::new(),
            daily_limit: 5000,
            quota_timezone: "UTC".to_owned(),
            quota_key_ttl_secs: 48 * 3600,
            reservation_ttl_secs: 300,
            sweep_interval_ms: 5000,
            redis_timeout_ms: 500,
        }
    }
}

/// Serves the quota on `listener` until `shutdown` resolves; sweeps abandoned
/// reservations meanwhile.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.token_metrics_listen).await?;
    // Series that only move on rare events exist from the start, at zero.
    for (name, label, values) in [
        (
            "quota_reservations_total",
            "result",
            ["granted", "rejected"],
        ),
        ("quota_settlements_total", "result", ["settled", "unknown"]),
        (
            "quota_refunds_total",
            "reason",
            ["failed_call", "abandoned"],
        ),
    ] {
        for value in values {
            metrics::counter!(name, label => value).increment(0);
        }
    }
    metrics::counter!("quota_store_errors_total").increment(0);
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
