//! The filter service's settings, read by `chat_common::settings::load` from the
//! config file and the environment.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`FILTER_LISTEN`).
    pub filter_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`FILTER_METRICS_LISTEN`; empty turns it off).
    pub filter_metrics_listen: String,
    /// Words and phrases that block a text (`BLOCKED_WORDS`, comma-separated). The
    /// default keeps the original's demo entry so a blocked text can be tried at once.
    #[serde(deserialize_with = "chat_common::settings::comma_list")]
    pub blocked_words: Vec<String>,
    /// Longest text accepted, in characters after cleaning (`MAX_TEXT_CHARS`).
    pub max_text_chars: usize,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            filter_listen: "0.0.0.0:50052".to_owned(),
            filter_metrics_listen: "0.0.0.0:9052".to_owned(),
            blocked_words: vec!["foo".to_owned()],
            max_text_chars: 8000,
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}
