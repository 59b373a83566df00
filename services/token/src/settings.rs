//! The token service's settings, read by `chat_common::settings::load` from the
//! config file and the environment.

use serde::Deserialize;

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
    /// Directory of the settlement journal: settlements Redis cannot take are written
    /// there durably and applied when it is back (`SETTLEMENT_JOURNAL_DIR`; empty turns
    /// it off, and such a settlement fails for the gateway to retry).
    pub settlement_journal_dir: String,
    /// The ratio of the provider's prompt tokens to our estimate assumed for a model
    /// whose usage was never reported (`PROMPT_RATIO_START`).
    pub prompt_ratio_start: f64,
    /// The most a model's calibrated ratio may be (`PROMPT_RATIO_MAX`).
    pub prompt_ratio_max: f64,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
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
            settlement_journal_dir: String::new(),
            prompt_ratio_start: 4.0,
            prompt_ratio_max: 8.0,
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}
