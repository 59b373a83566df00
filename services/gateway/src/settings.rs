//! The gateway's settings, from `GATEWAY_*` and the shared environment names.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Address the HTTP server binds (`GATEWAY_LISTEN`).
    pub gateway_listen: String,
    /// Address of the Prometheus metrics endpoint, `GET /metrics`
    /// (`GATEWAY_METRICS_LISTEN`; empty turns it off).
    pub gateway_metrics_listen: String,
    /// Where the services are (`FILTER_ADDR`, `TOKEN_ADDR`, `LLM_ADDR`, `HISTORY_ADDR`).
    pub filter_addr: String,
    pub token_addr: String,
    pub llm_addr: String,
    pub history_addr: String,
    /// Deadline of each hop, carried to the service in `grpc-timeout`.
    pub filter_timeout_ms: u64,
    pub token_timeout_ms: u64,
    pub history_timeout_ms: u64,
    pub llm_timeout_ms: u64,
    /// Chat requests per minute this process accepts (`RATE_LIMIT_PER_MINUTE`; 0 turns
    /// the limiter off). Excess requests get 429 at once, never a queue.
    pub rate_limit_per_minute: u32,
    /// Requests that may arrive at once before the per-minute pace applies
    /// (`RATE_LIMIT_BURST`; 0 means equal to the per-minute rate).
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Earlier messages of the conversation offered to the model (`CONTEXT_MESSAGES`).
    pub context_messages: u32,
    /// Token budget for those earlier messages; the oldest are dropped first (`CONTEXT_TOKENS`).
    pub context_tokens: usize,
    /// Cap on the reply's tokens, and so part of each reservation (`MAX_OUTPUT_TOKENS`).
    pub max_output_tokens: u32,
    /// Smallest reservation, whatever the estimate (`MIN_RESERVATION`; the original's flat 200).
    pub min_reservation: i64,
    /// Optional system prompt put before every conversation (`SYSTEM_PROMPT`).
    pub system_prompt: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gateway_listen: "0.0.0.0:8080".to_owned(),
            gateway_metrics_listen: "0.0.0.0:9080".to_owned(),
            filter_addr: "http://127.0.0.1:50052".to_owned(),
            token_addr: "http://127.0.0.1:50051".to_owned(),
            llm_addr: "http://127.0.0.1:50055".to_owned(),
            history_addr: "http://127.0.0.1:50054".to_owned(),
            filter_timeout_ms: 800,
            token_timeout_ms: 800,
            history_timeout_ms: 800,
            llm_timeout_ms: 12_000,
            rate_limit_per_minute: 3,
            rate_limit_burst: 0,
            max_body_bytes: 64 * 1024,
            context_messages: 20,
            context_tokens: 3000,
            max_output_tokens: 512,
            min_reservation: 200,
            system_prompt: String::new(),
        }
    }
}
