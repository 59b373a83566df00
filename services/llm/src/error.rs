//! What can go wrong with a completion, in the service's own terms. Providers and the
//! retry policy speak [`LlmError`]; only the gRPC edge turns it into a status, through
//! the shared [`ErrorCode`], so the gateway reads the same code every service sends.
//!
//! The messages travel to users as they are: any provider text in them has already
//! been scrubbed of the API key by the provider that produced it.

use chat_common::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request cannot be completed as sent.
    #[error("{0}")]
    BadRequest(&'static str),
    /// A request field the provider's API cannot take; the text names it.
    #[error("{0}")]
    InvalidRequest(String),
    /// The provider is rate limited or overloaded: worth another try after a pause.
    /// The retry policy turns it into one of the two below when it gives up.
    #[error("provider rate limited: {0}")]
    Transient(String),
    #[error("provider still rate limited after {retries} retries: {detail}")]
    RateLimited { retries: u32, detail: String },
    /// Waiting for the next try would outlast the caller's deadline.
    #[error("provider rate limited; no time left to retry: {0}")]
    RateLimitedAtDeadline(String),
    /// The provider account has no credit: retrying cannot help, an operator must.
    #[error("insufficient_quota: {0}")]
    InsufficientQuota(String),
    #[error("the provider did not answer before the deadline")]
    Timeout,
    /// The reply had begun, so the caller already holds part of it.
    #[error("the provider's stream broke: {0}")]
    StreamBroken(String),
    /// Anything else the provider answered or failed with; the text says which.
    #[error("{0}")]
    Provider(String),
}

impl LlmError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) | Self::InvalidRequest(_) => ErrorCode::BadRequest,
            Self::Transient(_) | Self::RateLimited { .. } | Self::RateLimitedAtDeadline(_) => {
                ErrorCode::RateLimited
            }
            Self::InsufficientQuota(_) => ErrorCode::InsufficientQuota,
            Self::Timeout => ErrorCode::Timeout,
            Self::StreamBroken(_) => ErrorCode::Unavailable,
            Self::Provider(_) => ErrorCode::Internal,
        }
    }
}

impl From<LlmError> for tonic::Status {
    fn from(error: LlmError) -> Self {
        Self::new(error.code().grpc_code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use tonic::{Code, Status};

    use super::*;

    /// The gateway tells these apart by code alone, so a changed code is a changed API.
    #[test]
    fn each_failure_keeps_its_grpc_code_and_message() {
        let cases = [
            (
                LlmError::BadRequest("messages must end with a non-empty user message"),
                Code::InvalidArgument,
                "messages must end with a non-empty user message",
            ),
            (
                LlmError::InvalidRequest("the provider refused the request: 400 bad seed".into()),
                Code::InvalidArgument,
                "the provider refused the request: 400 bad seed",
            ),
            (
                LlmError::RateLimited {
                    retries: 4,
                    detail: "429 slow down".into(),
                },
                Code::ResourceExhausted,
                "provider still rate limited after 4 retries: 429 slow down",
            ),
            (
                LlmError::RateLimitedAtDeadline("429 slow down".into()),
                Code::ResourceExhausted,
                "provider rate limited; no time left to retry: 429 slow down",
            ),
            (
                LlmError::InsufficientQuota("429 no credit".into()),
                Code::FailedPrecondition,
                "insufficient_quota: 429 no credit",
            ),
            (
                LlmError::Timeout,
                Code::DeadlineExceeded,
                "the provider did not answer before the deadline",
            ),
            (
                LlmError::StreamBroken("provider unreachable: reset".into()),
                Code::Unavailable,
                "the provider's stream broke: provider unreachable: reset",
            ),
            (
                LlmError::Provider("provider error: 500 boom".into()),
                Code::Internal,
                "provider error: 500 boom",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
