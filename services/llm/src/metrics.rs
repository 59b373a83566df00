//! Every metric the llm service exports, by name and label set, in one place: the
//! dashboards and alert rules under `deploy/` query these exact names and labels.
//! The gRPC server metrics (`rpc_server_*`) come from the shared layer in
//! `chat_common::observe`.

use std::time::Duration;

use metrics::{counter, histogram};

use crate::error::LlmError;
use crate::provider::Usage;

const REQUEST_DURATION: &str = "llm_request_duration_seconds";
const TOKENS: &str = "llm_tokens_total";
const RETRIES: &str = "llm_retries_total";
const STREAMS_CANCELLED: &str = "llm_streams_cancelled_total";

/// How a provider call ended: the `outcome` label of `llm_request_duration_seconds`,
/// and the `error.type` of its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The caller went away before the stream ended.
    Cancelled,
    RateLimited,
    InsufficientQuota,
    Timeout,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cancelled => "cancelled",
            Self::RateLimited => "rate_limited",
            Self::InsufficientQuota => "insufficient_quota",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

impl From<&LlmError> for Outcome {
    fn from(error: &LlmError) -> Self {
        match error {
            LlmError::Transient(_)
            | LlmError::RateLimited { .. }
            | LlmError::RateLimitedAtDeadline(_) => Self::RateLimited,
            LlmError::InsufficientQuota(_) => Self::InsufficientQuota,
            LlmError::Timeout => Self::Timeout,
            LlmError::BadRequest(_)
            | LlmError::InvalidRequest(_)
            | LlmError::StreamBroken(_)
            | LlmError::Provider(_) => Self::Error,
        }
    }
}

/// Series that only move on rare events exist from the start, at zero, so alerts and
/// dashboards see them before the first event.
pub fn describe(model: &str) {
    counter!(RETRIES, "model" => model.to_owned()).increment(0);
    counter!(STREAMS_CANCELLED).increment(0);
}

/// `model` is the one asked for, so a model's latency stays one series whichever
/// dated version answered.
pub fn call_finished(model: &str, outcome: Outcome, elapsed: Duration) {
    histogram!(REQUEST_DURATION, "model" => model.to_owned(), "outcome" => outcome.label())
        .record(elapsed);
}

/// `model` is the one that answered, which is what the provider bills.
pub fn tokens_used(model: &str, usage: Usage) {
    counter!(TOKENS, "model" => model.to_owned(), "kind" => "prompt")
        .increment(usage.prompt_tokens);
    counter!(TOKENS, "model" => model.to_owned(), "kind" => "completion")
        .increment(usage.completion_tokens);
}

pub fn retried(model: &str) {
    counter!(RETRIES, "model" => model.to_owned()).increment(1);
}

pub fn stream_cancelled() {
    counter!(STREAMS_CANCELLED).increment(1);
}
