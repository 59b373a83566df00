//! The keyword service's settings, read by `chat_common::settings::load` from the
//! config file and the environment.

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`KEYWORD_LISTEN`).
    pub keyword_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`KEYWORD_METRICS_LISTEN`; empty turns it off).
    pub keyword_metrics_listen: String,
    /// The history's MySQL (`MYSQL_DSN`, the same as the history service's): the index
    /// lives beside the messages it indexes. The history service creates the tables.
    pub mysql_dsn: SecretString,
    /// A jieba user dictionary to add to the built-in one, one `word [freq] [tag]` a line
    /// (`KEYWORD_DICT`; empty for none).
    pub keyword_dict: String,
    /// How often the indexer looks for newly saved messages (`KEYWORD_INDEX_INTERVAL_MS`).
    pub keyword_index_interval_ms: u64,
    /// Messages indexed in one transaction (`KEYWORD_INDEX_BATCH`).
    pub keyword_index_batch: u32,
    /// Deadline of each MySQL call (`STORE_TIMEOUT_MS`).
    pub store_timeout_ms: u64,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            keyword_listen: "0.0.0.0:50053".to_owned(),
            keyword_metrics_listen: "0.0.0.0:9053".to_owned(),
            mysql_dsn: SecretString::from("mysql://root:root@localhost:3306/chatdb"),
            keyword_dict: String::new(),
            keyword_index_interval_ms: 1000,
            keyword_index_batch: 256,
            store_timeout_ms: 2000,
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}
