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
    /// Where the keyword service is, for retrieval and `GET /search` (`KEYWORD_ADDR`;
    /// empty turns both off).
    pub keyword_addr: String,
    /// Deadline of each hop, carried to the service in `grpc-timeout`.
    pub filter_timeout_ms: u64,
    pub token_timeout_ms: u64,
    pub history_timeout_ms: u64,
    pub llm_timeout_ms: u64,
    /// Deadline of a call to the accounts service; a login hashes a password, so it is
    /// longer than the other hops' (`ACCOUNTS_TIMEOUT_MS`).
    pub accounts_timeout_ms: u64,
    /// Deadline of a keyword search. Retrieval runs beside the filter and the context
    /// lookup, so within this it adds nothing; past it the chat goes on without it
    /// (`KEYWORD_TIMEOUT_MS`).
    pub keyword_timeout_ms: u64,
    /// `on`: the caller's earlier messages relevant to the new text go into the prompt,
    /// marked as retrieved context; `off`: never (`RETRIEVAL`).
    pub retrieval: Switch,
    /// Token budget of the retrieved context in a prompt (`RETRIEVAL_TOKENS`).
    pub retrieval_tokens: usize,
    /// Where retrieval looks: `user` (all of the caller's conversations: what they said
    /// in another one can come back, marked as retrieved) or `conversation` (only the one
    /// the chat is in, so conversations never see each other) (`RETRIEVAL_SCOPE`).
    pub retrieval_scope: RetrievalScope,
    /// Requests that call the model (`/chat`, `/chat/stream`, `/v1/chat/completions`)
    /// per minute per user, shared by every gateway through Redis; an account's own
    /// `rate_limit_per_minute` replaces it (`RATE_LIMIT_PER_MINUTE`; 0 turns it off).
    /// Excess requests get 429 at once, never a queue.
    pub rate_limit_per_minute: u32,
    /// Requests that may arrive at once before the per-minute pace applies
    /// (`RATE_LIMIT_BURST`; 0 means equal to the per-minute rate).
    pub rate_limit_burst: u32,
    /// Other API requests (history, quota, conversations, models, ...) per minute per
    /// user, so that opening the page never spends a user's chats
    /// (`READ_RATE_LIMIT_PER_MINUTE`; 0 turns it off).
    pub read_rate_limit_per_minute: u32,
    /// Requests without a valid credential (logins, wrong keys) per minute per client
    /// address (`ADDRESS_RATE_LIMIT_PER_MINUTE`; 0 turns it off).
    pub address_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed, comma-separated addresses or CIDR
    /// ranges (`TRUSTED_PROXIES`); empty: the client is the TCP peer.
    pub trusted_proxies: String,
    /// Where the shared rate limiter keeps its buckets (`REDIS_ADDR`, as the services).
    pub redis_addr: String,
    /// Prefix of every Redis key (`REDIS_KEY_PREFIX`, as the services).
    pub redis_key_prefix: String,
    /// How long a rate-limit check may wait for Redis before this gateway falls back to
    /// its own in-process limits (`RATE_LIMIT_REDIS_TIMEOUT_MS`).
    pub rate_limit_redis_timeout_ms: u64,
    /// Requests this process serves at once; beyond, a request is answered 503 at once
    /// rather than queued into timeouts (`MAX_CONCURRENT_REQUESTS`).
    pub max_concurrent_requests: usize,
    /// Streams this process relays at once, a smaller cap since each holds a model call
    /// for its whole length; beyond, 503 `streams_overloaded` (`MAX_CONCURRENT_STREAMS`;
    /// 0: no cap of its own).
    pub max_concurrent_streams: usize,
    /// Streams one user may have open at once on this gateway; beyond, 429
    /// `too_many_streams` (`MAX_STREAMS_PER_USER`; 0: no cap).
    pub max_streams_per_user: u32,
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
    /// The model the llm service is configured with, which `/v1` offers first: the same
    /// variable as the llm service's (`OPENAI_MODEL`).
    pub openai_model: String,
    /// More models `/v1` clients may ask for, comma-separated (`ALLOWED_MODELS`); any
    /// other is 404 `model_not_found`.
    pub allowed_models: String,
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
    /// How long a caller once checked is still let in while the accounts service cannot
    /// answer (MySQL down): availability over a revocation made during the outage
    /// (`AUTH_STALE_TTL_MS`; 0 turns it off).
    pub auth_stale_ttl_ms: u64,
    /// Origins allowed to send state-changing requests besides the gateway's own,
    /// comma-separated, e.g. `https://chat.example.com` (`ALLOWED_ORIGINS`).
    pub allowed_origins: String,
    /// Mark the session cookie `Secure`: `auto` when the request came over HTTPS (as a
    /// proxy's `X-Forwarded-Proto` says), `always` or `never` (`COOKIE_SECURE`).
    pub cookie_secure: String,
    /// Seconds a stop (SIGTERM) may take: new work is refused at once, work in flight
    /// finishes, and what is still running near the end is wrapped up
    /// (`SHUTDOWN_GRACE_SECS`; the orchestrator's grace must be longer).
    pub shutdown_grace_secs: u64,
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
            keyword_addr: "http://127.0.0.1:50053".to_owned(),
            keyword_timeout_ms: 300,
            retrieval: Switch::On,
            retrieval_tokens: 300,
            retrieval_scope: RetrievalScope::User,
            filter_timeout_ms: 800,
            token_timeout_ms: 800,
            history_timeout_ms: 800,
            llm_timeout_ms: 12_000,
            accounts_timeout_ms: 3000,
            rate_limit_per_minute: 3,
            rate_limit_burst: 0,
            read_rate_limit_per_minute: 120,
            address_rate_limit_per_minute: 30,
            trusted_proxies: String::new(),
            redis_addr: "localhost:6379".to_owned(),
            redis_key_prefix: String::new(),
            rate_limit_redis_timeout_ms: 100,
            max_concurrent_requests: 1024,
            max_concurrent_streams: 256,
            max_streams_per_user: 4,
            max_body_bytes: 64 * 1024,
            context_messages: 20,
            context_tokens: 3000,
            max_output_tokens: 512,
            min_reservation: 200,
            system_prompt: String::new(),
            openai_model: "gpt-4o-mini".to_owned(),
            allowed_models: String::new(),
            auth_mode: AuthMode::Required,
            admin_api_key: None,
            admin_password: None,
            auth_cache_ttl_ms: 2000,
            auth_stale_ttl_ms: 600_000,
            allowed_origins: String::new(),
            cookie_secure: "auto".to_owned(),
            shutdown_grace_secs: chat_common::shutdown::DEFAULT_GRACE_SECS,
        }
    }
}

/// A feature turned `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

/// Which of the caller's earlier messages retrieval may bring back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalScope {
    User,
    Conversation,
}
