//! Every way a request can fail, mapped once to an HTTP status and a JSON body
//! `{"error": "...", "code": "...", "detail": "..."}`. `error` is the original's
//! string, kept for its clients; `code` is stable snake_case for programs (the UI
//! matches on it, never on prose). 5xx bodies say which service failed and how, never
//! a stack trace; the full cause goes to the log.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_common::ErrorCode;
use chat_proto::QuotaState;
use serde_json::json;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad json or missing user_id")]
    BadJson(String),
    #[error("invalid user_id")]
    InvalidUserId(String),
    #[error("invalid text")]
    InvalidText(String),
    /// A field of an admin or login request that cannot be used.
    #[error("bad request")]
    InvalidField(String),
    #[error("payload too large")]
    PayloadTooLarge(usize),
    #[error("text blocked by filter")]
    Blocked(String),
    /// This gateway's own limiter.
    #[error("rate_limited")]
    RateLimited(Duration),
    /// The provider kept rate limiting after our retries.
    #[error("rate_limited")]
    ProviderRateLimited(String),
    #[error("quota_exceeded")]
    QuotaExceeded(QuotaState),
    #[error("insufficient_quota")]
    InsufficientQuota(String),
    /// No credential, or a wrong, revoked or expired one, or a disabled user.
    #[error("unauthorized")]
    Unauthorized(String),
    /// A credential asking for someone else's data, or a request from a foreign origin.
    #[error("forbidden")]
    Forbidden(String),
    #[error("not found")]
    NotFound(String),
    #[error("already exists")]
    AlreadyExists(String),
    /// A state-changing request whose body is not declared `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Too many failed logins for the account or the address.
    #[error("rate_limited")]
    LoginThrottled(Duration),
    /// This gateway is serving `MAX_CONCURRENT_REQUESTS` already.
    #[error("overloaded")]
    Overloaded,
    /// This gateway is relaying `MAX_CONCURRENT_STREAMS` streams already.
    #[error("overloaded")]
    StreamsOverloaded,
    /// The user has `MAX_STREAMS_PER_USER` streams open on this gateway already.
    #[error("rate_limited")]
    TooManyStreams(u32),
    /// A service failed or did not answer in time.
    #[error("{service} failed")]
    Dependency {
        service: &'static str,
        status: Status,
    },
}

impl ApiError {
    /// A failed call to `service`, classified by its gRPC status.
    pub fn dependency(service: &'static str, status: Status) -> Self {
        Self::Dependency { service, status }
    }

    /// A failed call to the llm service: its status codes carry the provider's answer.
    pub fn from_llm(status: Status) -> Self {
        match ErrorCode::from_grpc(status.code()) {
            ErrorCode::RateLimited => Self::ProviderRateLimited(status.message().to_owned()),
            ErrorCode::InsufficientQuota => Self::InsufficientQuota(status.message().to_owned()),
            _ => Self::dependency("llm", status),
        }
    }

    /// A failed call to the accounts service: its refusals are the caller's, not failures.
    pub fn from_accounts(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => Self::Unauthorized(message),
            Code::PermissionDenied => Self::Forbidden(message),
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::InvalidArgument => Self::InvalidField(message),
            Code::ResourceExhausted => Self::LoginThrottled(retry_after_of(&status)),
            _ => Self::dependency("history", status),
        }
    }

    pub fn status(&self) -> StatusCode {
        let code = match self {
            Self::Unauthorized(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::PermissionDenied,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::UnsupportedMediaType => return StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Overloaded | Self::StreamsOverloaded => ErrorCode::Unavailable,
            Self::TooManyStreams(_) => ErrorCode::RateLimited,
            Self::LoginThrottled(_) => ErrorCode::RateLimited,
            Self::BadJson(_)
            | Self::InvalidUserId(_)
            | Self::InvalidText(_)
            | Self::InvalidField(_) => ErrorCode::BadRequest,
            Self::PayloadTooLarge(_) => return StatusCode::PAYLOAD_TOO_LARGE,
            Self::Blocked(_) => ErrorCode::Blocked,
            Self::RateLimited(_) | Self::ProviderRateLimited(_) => ErrorCode::RateLimited,
            Self::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            Self::InsufficientQuota(_) => ErrorCode::InsufficientQuota,
            Self::Dependency { status, .. } => match status.code() {
                Code::Unavailable => ErrorCode::Unavailable,
                Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Timeout,
                _ => ErrorCode::Internal,
            },
        };
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn detail(&self) -> String {
        match self {
            Self::BadJson(detail)
            | Self::InvalidUserId(detail)
            | Self::InvalidText(detail)
            | Self::InvalidField(detail)
            | Self::Unauthorized(detail)
            | Self::Forbidden(detail)
            | Self::NotFound(detail)
            | Self::AlreadyExists(detail)
            | Self::Blocked(detail)
            | Self::ProviderRateLimited(detail)
            | Self::InsufficientQuota(detail) => detail.clone(),
            Self::UnsupportedMediaType => {
                "send the body as JSON with content-type: application/json".to_owned()
            }
            Self::Overloaded => "the gateway is at its limit of requests at once; retry".to_owned(),
            Self::StreamsOverloaded => {
                "the gateway is at its limit of streams at once; retry".to_owned()
            }
            Self::TooManyStreams(cap) => {
                format!("at most {cap} streams at once per user; wait for one to end")
            }
            Self::LoginThrottled(wait) => format!(
                "too many failed logins; try again in {} s",
                retry_after_secs(*wait)
            ),
            Self::PayloadTooLarge(limit) => {
                format!("the request body is larger than {limit} bytes")
            }
            Self::RateLimited(wait) => {
                format!("too many requests; retry in {} s", retry_after_secs(*wait))
            }
            Self::QuotaExceeded(quota) => format!(
                "the daily token quota is spent ({} of {} left); it resets in {} s",
                quota.remaining, quota.limit, quota.reset_after_seconds
            ),
            Self::Dependency { service, status } => match status.code() {
                Code::Unavailable => format!("the {service} service is unavailable"),
                Code::DeadlineExceeded | Code::Cancelled => {
                    format!("the {service} service did not answer in time")
                }
                // The llm service's messages describe the provider's answer, scrubbed of secrets.
                _ if *service == "llm" => status.message().to_owned(),
                _ => format!("the {service} service failed"),
            },
        }
    }

    /// The stable, machine-readable name of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadJson(_) => "bad_request",
            Self::InvalidUserId(_) => "invalid_user_id",
            Self::InvalidText(_) => "invalid_text",
            Self::InvalidField(_) => "invalid_field",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Overloaded => "overloaded",
            Self::StreamsOverloaded => "streams_overloaded",
            Self::TooManyStreams(_) => "too_many_streams",
            Self::LoginThrottled(_) => "login_throttled",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Blocked(_) => "blocked",
            Self::RateLimited(_) => "rate_limited",
            Self::ProviderRateLimited(_) => "provider_rate_limited",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::InsufficientQuota(_) => "insufficient_quota",
            Self::Dependency { status, .. } => match status.code() {
                Code::Unavailable => "service_unavailable",
                Code::DeadlineExceeded | Code::Cancelled => "service_timeout",
                _ => "service_failed",
            },
        }
    }

    /// The JSON body: `{"error", "code", "detail"}`, the failed `service` for a
    /// dependency, and the quota for `quota_exceeded`.
    pub fn body(&self) -> serde_json::Value {
        let mut body =
            json!({"error": self.to_string(), "code": self.code(), "detail": self.detail()});
        match self {
            Self::QuotaExceeded(quota) => {
                body["remaining"] = quota.remaining.into();
                body["limit"] = quota.limit.into();
                body["reset_after_seconds"] = quota.reset_after_seconds.into();
            }
            Self::Dependency { service, .. } => body["service"] = (*service).into(),
            _ => {}
        }
        body
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited(wait) | Self::LoginThrottled(wait) => Some(retry_after_secs(*wait)),
            Self::QuotaExceeded(quota) => Some(quota.reset_after_seconds.max(1) as u64),
            Self::Overloaded | Self::StreamsOverloaded | Self::TooManyStreams(_) => Some(1),
            _ => None,
        }
    }
}

/// The wait a refusing service put in its `retry-after` metadata (seconds), else a minute.
fn retry_after_of(status: &Status) -> Duration {
    let seconds = status
        .metadata()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            if let Self::Dependency { service, status } = &self {
                tracing::error!(service, code = ?status.code(), message = %status.message(), "dependency failed");
            }
        } else {
            tracing::info!(error = %self, detail = %self.detail(), "request refused");
        }
        let body = self.body();
        let retry_after = self.retry_after();
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_table() {
        let cases = [
            (ApiError::BadJson(String::new()), 400),
            (ApiError::Blocked(String::new()), 400),
            (ApiError::PayloadTooLarge(1), 413),
            (ApiError::Unauthorized(String::new()), 401),
            (ApiError::Forbidden(String::new()), 403),
            (ApiError::NotFound(String::new()), 404),
            (ApiError::AlreadyExists(String::new()), 409),
            (ApiError::UnsupportedMediaType, 415),
            (ApiError::Overloaded, 503),
            (ApiError::StreamsOverloaded, 503),
            (ApiError::TooManyStreams(2), 429),
            (ApiError::from_accounts(Status::unauthenticated("x")), 401),
            (
                ApiError::from_accounts(Status::resource_exhausted("x")),
                429,
            ),
            (ApiError::InsufficientQuota(String::new()), 402),
            (ApiError::RateLimited(Duration::from_millis(1500)), 429),
            (ApiError::QuotaExceeded(QuotaState::default()), 429),
            (ApiError::dependency("filter", Status::internal("x")), 500),
            (ApiError::dependency("token", Status::unavailable("x")), 503),
            (ApiError::from_llm(Status::deadline_exceeded("x")), 504),
            (ApiError::from_llm(Status::resource_exhausted("x")), 429),
            (ApiError::from_llm(Status::failed_precondition("x")), 402),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            let code = error.code();
            assert!(
                !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}"
            );
            assert_eq!(error.body()["code"], code);
        }
        let failed = ApiError::dependency("history", Status::unavailable("x")).body();
        assert_eq!(failed["code"], "service_unavailable");
        assert_eq!(failed["service"], "history");
        assert_eq!(
            ApiError::RateLimited(Duration::from_millis(1500)).retry_after(),
            Some(2)
        );
        assert_eq!(
            ApiError::dependency("llm", Status::internal("x")).to_string(),
            "llm failed"
        );
    }
}
