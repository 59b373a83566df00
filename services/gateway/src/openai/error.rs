//! Errors of the `/v1` API in OpenAI's shape, `{"error": {"message", "type", "param",
//! "code"}}`, with OpenAI's statuses, so the SDKs raise their usual exceptions:
//!
//! | status | `type` | `code` | when |
//! |---:|---|---|---|
//! | 400 | `invalid_request_error` | `null`, or `content_filter` | a field that cannot be honoured (`param` names it); blocked text |
//! | 401 | `invalid_request_error` | `invalid_api_key` | no key, or a wrong, revoked or expired one |
//! | 403 | `permission_error` | `forbidden` | a cross-site request |
//! | 404 | `invalid_request_error` | `model_not_found`, `unknown_url` | a model not offered; a path that does not exist |
//! | 429 | `requests` | `rate_limit_exceeded` | over the rate limit (ours, with `Retry-After`; or the provider's after our retries) |
//! | 429 | `tokens` | `quota_exceeded` | the daily token quota is spent: `Retry-After` until the reset and `x-should-retry: false` |
//! | 402 | `insufficient_quota` | `insufficient_quota` | the provider account has no credit |
//! | 500 / 503 / 504 | `server_error` | `service_failed`, `service_unavailable`, `service_timeout`, `overloaded`, ... | a service failed, is unreachable, or missed its deadline |
//!
//! Errors made elsewhere in the gateway for a `/v1` path (the rate limiter, the
//! concurrency cap, the body limit, the cross-site guard) come out in the gateway's own
//! shape; [`openai_errors`] rewrites them into this one on the way out.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::ApiError;

/// The largest gateway error body rewritten; error bodies are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct V1Error {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// Sends `x-should-retry: false`: retrying cannot succeed before `Retry-After`.
    pub final_answer: bool,
}

impl V1Error {
    fn new(status: StatusCode, kind: &'static str, code: Option<&str>, message: String) -> Self {
        Self {
            status,
            message,
            kind,
            param: None,
            code: code.map(str::to_owned),
            retry_after: None,
            final_answer: false,
        }
    }

    /// 400 for a request that cannot be honoured as sent; `param` names the field.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                message.into(),
            )
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".to_owned()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
    }

    pub fn unknown_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Invalid URL ({method} {path})"),
        )
    }

    /// 400 `content_filter`: the filter blocked the text of message `index`.
    pub fn blocked(index: usize, reason: &str) -> Self {
        Self {
            param: Some(format!("messages[{index}].content")),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("content_filter"),
                format!("The text was blocked by the content filter: {reason}"),
            )
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// An error of the gateway's own shape, `{"error", "code", "detail"}`, by its
    /// status and code.
    fn from_parts(status: StatusCode, code: &str, detail: String) -> Self {
        let (kind, code) = match (status.as_u16(), code) {
            (401, _) => ("invalid_request_error", "invalid_api_key"),
            (403, _) => ("permission_error", code),
            (402, _) => ("insufficient_quota", "insufficient_quota"),
            (429, "quota_exceeded") => ("tokens", "quota_exceeded"),
            (429, "rate_limited" | "provider_rate_limited" | "too_many_streams") => {
                ("requests", "rate_limit_exceeded")
            }
            (429, _) => ("requests", code),
            (400 | 404 | 405 | 409 | 413 | 415, "blocked") => {
                ("invalid_request_error", "content_filter")
            }
            (400..=499, _) => ("invalid_request_error", code),
            _ => ("server_error", code),
        };
        Self::new(status, kind, Some(code), detail)
    }
}

impl From<ApiError> for V1Error {
    fn from(error: ApiError) -> Self {
        let body = error.body();
        let detail = body["detail"].as_str().unwrap_or_default().to_owned();
        let mut converted = Self::from_parts(error.status(), error.code(), detail);
        converted.retry_after = match &error {
            ApiError::RateLimited(wait) => Some(whole_seconds(*wait)),
            ApiError::QuotaExceeded(quota) => {
                converted.final_answer = true;
                Some(quota.reset_after_seconds.max(1) as u64)
            }
            ApiError::Overloaded | ApiError::StreamsOverloaded | ApiError::TooManyStreams(_) => {
                Some(1)
            }
            _ => None,
        };
        if let ApiError::InvalidUserId(_) = error {
            converted.param = Some("user".to_owned());
        }
        if let ApiError::Dependency { service, status } = &error {
            tracing::error!(service, code = ?status.code(), message = %status.message(), "dependency failed");
        }
        converted
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        if !self.status.is_server_error() {
            tracing::info!(status = self.status.as_u16(), code = ?self.code, param = ?self.param, message = %self.message, "request refused");
        }
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.final_answer {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

/// Whether `path` is the `/v1` API's.
pub fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// On `/v1` paths, an error of the gateway's own shape becomes OpenAI's, keeping its
/// status and headers (`Retry-After`, the rate-limit headers), and a page of the UI
/// (which no `/v1` path may answer) becomes a 404.
pub async fn openai_errors(request: Request, next: Next) -> Response {
    if !is_v1(request.uri().path()) {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("text/html") {
        return V1Error::unknown_url(&method, &path).into_response();
    }
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if !content_type.starts_with("application/json") {
        // axum's own refusals (405 and the like) have no body worth keeping.
        let code = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            _ => "error",
        };
        let reason = status.canonical_reason().unwrap_or("error").to_owned();
        let converted = V1Error::from_parts(status, code, reason);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Response::from_parts(parts, Body::from(converted.body().to_string()));
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return V1Error::from_parts(status, "internal", "the error could not be read".into())
            .into_response();
    };
    let ours: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(error) = ours["error"].as_str() else {
        // Already OpenAI's shape (or not JSON at all): as it was.
        return Response::from_parts(parts, Body::from(bytes));
    };
    let code = ours["code"].as_str().unwrap_or(error);
    let detail = ours["detail"].as_str().unwrap_or(error).to_owned();
    let converted = V1Error::from_parts(status, code, detail);
    if code == "quota_exceeded" {
        parts
            .headers
            .insert("x-should-retry", HeaderValue::from_static("false"));
    }
    Response::from_parts(parts, Body::from(converted.body().to_string()))
}

#[cfg(test)]
mod tests {
    use chat_proto::QuotaState;
    use tonic::Status;

    use super::*;

    #[test]
    fn every_gateway_error_has_openai_status_type_and_code() {
        let quota = QuotaState {
            remaining: 3,
            limit: 100,
            reset_after_seconds: 3600,
        };
        let cases = [
            (
                ApiError::Unauthorized("no key".into()),
                401,
                "invalid_request_error",
                "invalid_api_key",
            ),
            (
                ApiError::Forbidden("x".into()),
                403,
                "permission_error",
                "forbidden",
            ),
            (
                ApiError::Blocked("foo".into()),
                400,
                "invalid_request_error",
                "content_filter",
            ),
            (
                ApiError::BadJson("x".into()),
                400,
                "invalid_request_error",
                "bad_request",
            ),
            (
                ApiError::InvalidUserId("x".into()),
                400,
                "invalid_request_error",
                "invalid_user_id",
            ),
            (
                ApiError::PayloadTooLarge(10),
                413,
                "invalid_request_error",
                "payload_too_large",
            ),
            (
                ApiError::RateLimited(Duration::from_millis(1500)),
                429,
                "requests",
                "rate_limit_exceeded",
            ),
            (
                ApiError::ProviderRateLimited("x".into()),
                429,
                "requests",
                "rate_limit_exceeded",
            ),
            (
                ApiError::QuotaExceeded(quota),
                429,
                "tokens",
                "quota_exceeded",
            ),
            (
                ApiError::InsufficientQuota("x".into()),
                402,
                "insufficient_quota",
                "insufficient_quota",
            ),
            (ApiError::Overloaded, 503, "server_error", "overloaded"),
            (
                ApiError::dependency("token", Status::unavailable("x")),
                503,
                "server_error",
                "service_unavailable",
            ),
            (
                ApiError::dependency("llm", Status::internal("500 boom")),
                500,
                "server_error",
                "service_failed",
            ),
            (
                ApiError::dependency("llm", Status::deadline_exceeded("x")),
                504,
                "server_error",
                "service_timeout",
            ),
        ];
        for (error, status, kind, code) in cases {
            let shown = format!("{error:?}");
            let converted = V1Error::from(error);
            assert_eq!(converted.status.as_u16(), status, "{shown}");
            let body = converted.body();
            assert_eq!(body["error"]["type"], kind, "{shown}");
            assert_eq!(body["error"]["code"], code, "{shown}");
            assert!(body["error"]["message"].is_string(), "{shown}");
            assert!(body["error"].get("param").is_some(), "{shown}");
        }
        let limited = V1Error::from(ApiError::RateLimited(Duration::from_millis(1500)));
        assert_eq!(
            (limited.retry_after, limited.final_answer),
            (Some(2), false)
        );
        let spent = V1Error::from(ApiError::QuotaExceeded(quota));
        assert_eq!((spent.retry_after, spent.final_answer), (Some(3600), true));
        assert_eq!(
            V1Error::from(ApiError::InvalidUserId("x".into()))
                .param
                .as_deref(),
            Some("user")
        );
    }
}
