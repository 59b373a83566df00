//! What a browser must not be tricked into: every response carries the security
//! headers (the page's CSP as a header, no framing, no sniffing, no referrer), and a
//! state-changing request is refused unless its body is declared JSON (a cross-site form
//! cannot send that without a preflight) and it comes from the gateway's own origin or
//! one in `ALLOWED_ORIGINS`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The origins allowed besides the request's own host.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    /// From `ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]`.
    pub fn from_setting(setting: &str) -> Self {
        let allowed = setting
            .split(',')
            .map(|origin| origin.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|origin| !origin.is_empty())
            .collect();
        Self { allowed }
    }

    /// A request without `Origin` (curl, SDKs, same-origin GETs) is not a browser's
    /// cross-site request; one with it must name this host or an allowed origin.
    fn admits(&self, headers: &HeaderMap) -> bool {
        if header_str(headers, "sec-fetch-site") == Some("cross-site") {
            return false;
        }
        let Some(origin) = header_str(headers, header::ORIGIN.as_str()) else {
            return true;
        };
        let origin = origin.to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            return true;
        }
        let host = header_str(headers, header::HOST.as_str()).map(str::to_ascii_lowercase);
        let origin_host = origin.split_once("://").map(|(_, host)| host);
        host.is_some() && origin_host == host.as_deref()
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn is_json(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|value| {
        value
            .split(';')
            .next()
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// Refuses a state-changing request from a foreign origin (403) or with a body not
/// declared JSON (415). On the matched routes only: an unknown path stays a 404.
pub async fn refuse_cross_site(
    State(origins): State<Arc<Origins>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method();
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    if !origins.admits(request.headers()) {
        return ApiError::Forbidden("cross-origin requests are not accepted".to_owned())
            .into_response();
    }
    if *method != Method::DELETE && !is_json(request.headers()) {
        return ApiError::UnsupportedMediaType.into_response();
    }
    next.run(request).await
}

/// The security headers, on every response (the UI's pages and the API's answers).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_the_own_and_allowed_origins_change_state() {
        let origins = Origins::from_setting("https://chat.example.com/, ");
        assert!(
            origins.admits(&headers(&[])),
            "no Origin: not a browser form"
        );
        assert!(origins.admits(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(origins.admits(&headers(&[
            ("host", "gw"),
            ("origin", "https://chat.example.com")
        ])));
        assert!(!origins.admits(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example")
        ])));
        assert!(!origins.admits(&headers(&[("host", "127.0.0.1:8080"), ("origin", "null")])));
        assert!(!origins.admits(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "application/json; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
    }
}
