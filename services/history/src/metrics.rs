//! Every series the history service records itself, with its labels. The Grafana
//! dashboard and the Prometheus rules in `deploy/` query these names: rename nothing
//! here without them. MySQL and Redis calls are timed by `chat_common::observe::db`,
//! under the `system` labels below.

use ::metrics::{counter, histogram};

const CACHE_REQUESTS: &str = "history_cache_requests_total";
const WRITE_BATCH_SIZE: &str = "history_write_batch_size";

/// The `system` labels of this service's `db_client_*` series.
pub const MYSQL: &str = "mysql";
pub const REDIS: &str = "redis";

/// How a `List` was answered, the `result` label of `history_cache_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    /// More messages asked for than the cache holds: read from MySQL directly.
    Bypass,
    /// The cache failed; MySQL answered instead.
    Error,
}

impl CacheResult {
    const ALL: [Self; 4] = [Self::Hit, Self::Miss, Self::Bypass, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
            Self::Error => "error",
        }
    }
}

/// Creates the series that only move on rare events at zero, so dashboards and alerts
/// see them before the first event.
pub fn register() {
    for result in CacheResult::ALL {
        counter!(CACHE_REQUESTS, "result" => result.label()).increment(0);
    }
}

pub fn cache_request(result: CacheResult) {
    counter!(CACHE_REQUESTS, "result" => result.label()).increment(1);
}

/// Saves committed by one INSERT: how well group commit is batching.
pub fn write_batch(saves: usize) {
    histogram!(WRITE_BATCH_SIZE).record(saves as f64);
}
