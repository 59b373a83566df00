//! The history service's settings, read by `chat_common::settings::load` from the
//! config file and the environment.

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`HISTORY_LISTEN`).
    pub history_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`HISTORY_METRICS_LISTEN`; empty turns it off).
    pub history_metrics_listen: String,
    /// `mysql://user:pass@host:3306/db` or the original's Go form
    /// `user:pass@tcp(host:3306)/db?...` (`MYSQL_DSN`). Secret: it holds a password.
    pub mysql_dsn: SecretString,
    /// `host:port` or `redis://` URL (`REDIS_ADDR`).
    pub redis_addr: String,
    /// Prepended to every key, to share one Redis between deployments or tests.
    pub redis_key_prefix: String,
    /// Messages kept in each user's cached list (`HISTORY_CACHE_SIZE`).
    pub history_cache_size: u32,
    /// A cached list unused this long expires, bounding staleness after an outage.
    pub history_cache_ttl_secs: u64,
    /// Messages a `List` without a limit returns.
    pub history_default_limit: u32,
    /// Most messages one `List` may return.
    pub history_max_limit: u32,
    /// Per-operation timeout for MySQL and Redis, so an outage answers promptly.
    pub store_timeout_ms: u64,
    /// How long a save waits for MySQL before it goes to the outbox in Redis instead
    /// (`HISTORY_SAVE_TIMEOUT_MS`): the longest a chat waits on a hung MySQL.
    pub history_save_timeout_ms: u64,
    /// Tasks committing saves; each commits whatever saves wait, as one INSERT
    /// (`HISTORY_WRITERS`).
    pub history_writers: usize,
    /// Most rows in one group-committed INSERT (`HISTORY_BATCH_ROWS`).
    pub history_batch_rows: usize,
    /// How long a UI login lasts (`SESSION_TTL_SECONDS`); the session ends then even
    /// while in use, so a stolen cookie does not live forever.
    pub session_ttl_seconds: u64,
    /// Failed logins per account, and per client address, before further attempts are
    /// refused unchecked until the window ends (`LOGIN_MAX_FAILURES`).
    pub login_max_failures: u32,
    /// The window failed logins are counted in, from the first one
    /// (`LOGIN_FAILURE_WINDOW_SECONDS`).
    pub login_failure_window_seconds: u64,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            history_listen: "0.0.0.0:50054".to_owned(),
            history_metrics_listen: "0.0.0.0:9054".to_owned(),
            mysql_dsn: SecretString::from("mysql://root:root@localhost:3306/chatdb"),
            redis_addr: "localhost:6379".to_owned(),
            redis_key_prefix: String::new(),
            history_cache_size: 40,
            history_cache_ttl_secs: 24 * 3600,
            history_default_limit: 40,
            history_max_limit: 200,
            store_timeout_ms: 2000,
            history_save_timeout_ms: 500,
            history_writers: 4,
            history_batch_rows: 256,
            session_ttl_seconds: 12 * 3600,
            login_max_failures: 5,
            login_failure_window_seconds: 15 * 60,
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mysql_password_never_shows_in_debug_output() {
        let settings = Settings {
            mysql_dsn: SecretString::from("mysql://chat:hunter2@db:3306/chatdb"),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
