//! The gateway's settings, from `GATEWAY_*` and the shared environment names.

use secrecy::SecretString;
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
    /// Deadline of a call to the accounts service; a login hashes a password, so it is
    /// longer than the other hops' (`ACCOUNTS_TIMEOUT_MS`).
    pub accounts_timeout_ms: u64,
    /// Chat requests per minute this process accepts (`RATE_LIMIT_PER_MINUTE`; 0 turns
    /// the limiter off). Excess requests get 429 at once, never a queue.
    pub rate_limit_per_minute: u32,
    /// Requests that may arrive at once before the per-minute pace applies
    /// (`RATE_LIMIT_BURST`; 0 means equal to the per-minute rate).
    pub rate_limit_burst: u32,
    /// Requests this process serves at once; beyond, a request is answered 503 at once
    /// rather than queued into timeouts (`MAX_CONCURRENT_REQUESTS`).
    pub max_concurrent_requests: usize,
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
    /// `required` (every caller shows an API key or a session) or `none` (the original's
    /// trust-the-id mode, for local trials) (`AUTH_MODE`).
    pub auth_mode: AuthMode,
    /// Bearer secret of the admin API; unset turns the admin API off (`ADMIN_API_KEY`).
    pub admin_api_key: Option<SecretString>,
    /// Password of the `admin` user created on first start; unset means a random one,
    /// written once to the log (`ADMIN_PASSWORD`).
    pub admin_password: Option<SecretString>,
    /// How long a checked credential is trusted before it is checked again: the longest
    /// a revoked key keeps working on a replica (`AUTH_CACHE_TTL_MS`).
    pub auth_cache_ttl_ms: u64,
    /// Origins allowed to send state-changing requests besides the gateway's own,
    /// comma-separated, e.g. `https://chat.example.com` (`ALLOWED_ORIGINS`).
    pub allowed_origins: String,
    /// Mark the session cookie `Secure`: `auto` when the request came over HTTPS (as a
    /// proxy's `X-Forwarded-Proto` says), `always` or `never` (`COOKIE_SECURE`).
    pub cookie_secure: String,
}

/// Who may call the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// An API key or a login session on every request.
    Required,
    /// The user is whoever the request says: no login (the original's behaviour).
    None,
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
            accounts_timeout_ms: 3000,
            rate_limit_per_minute: 3,
            rate_limit_burst: 0,
            max_concurrent_requests: 1024,
            max_body_bytes: 64 * 1024,
            context_messages: 20,
            context_tokens: 3000,
            max_output_tokens: 512,
            min_reservation: 200,
            system_prompt: String::new(),
            auth_mode: AuthMode::Required,
            admin_api_key: None,
            admin_password: None,
            auth_cache_ttl_ms: 2000,
            allowed_origins: String::new(),
            cookie_secure: "auto".to_owned(),
        }
    }
}
