//! The llm service's settings, read by `chat_common::settings::load` from the defaults
//! below, then the settings file, then the environment.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the gRPC server binds (`LLM_LISTEN`).
    pub llm_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`LLM_METRICS_LISTEN`; empty turns it off).
    pub llm_metrics_listen: String,
    /// Provider API key (`OPENAI_API_KEY`); without it the mock provider answers.
    pub openai_api_key: Option<SecretString>,
    /// Base URL of the Chat Completions API, ending in `/v1` (`OPENAI_BASE_URL`).
    pub openai_base_url: String,
    /// Model asked for (`OPENAI_MODEL`).
    pub openai_model: String,
    /// `auto` (OpenAI when a key is set, else the mock), `openai` or `mock` (`LLM_PROVIDER`).
    pub llm_provider: String,
    /// Completion cap when the caller sets none (`MAX_OUTPUT_TOKENS`).
    pub max_output_tokens: u32,
    /// Deadline when the caller sets none (`LLM_TIMEOUT_MS`).
    pub llm_timeout_ms: u64,
    /// Retries after an upstream rate limit, deadline permitting (`LLM_MAX_RETRIES`).
    pub llm_max_retries: u32,
    /// First backoff after a rate limit; doubled each retry, with jitter (`LLM_RETRY_BASE_MS`).
    pub llm_retry_base_ms: u64,
    /// Pause between the mock provider's streamed words (`MOCK_CHUNK_DELAY_MS`).
    pub mock_chunk_delay_ms: u64,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            llm_listen: "0.0.0.0:50055".to_owned(),
            llm_metrics_listen: "0.0.0.0:9055".to_owned(),
            openai_api_key: None,
            openai_base_url: "https://api.openai.com/v1".to_owned(),
            openai_model: "gpt-4o-mini".to_owned(),
            llm_provider: "auto".to_owned(),
            max_output_tokens: 512,
            llm_timeout_ms: 12_000,
            llm_max_retries: 4,
            llm_retry_base_ms: 250,
            mock_chunk_delay_ms: 30,
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}

impl Settings {
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.llm_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let settings = Settings {
            openai_api_key: Some(SecretString::from("sk-very-secret")),
            ..Settings::default()
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
    }
}
