//! The HTTP side of observability: a server span per request that continues an
//! incoming `traceparent`, `http_server_*` metrics by route, method and status, and the
//! trace id in an `x-trace-id` response header so a user can find the trace.
//! `/health` is neither traced nor counted.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACE_ID_HEADER: &str = "x-trace-id";

pub async fn observe(request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    // Unmatched paths share one label: their number is unbounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!(
        "http request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = Empty,
    );
    let _ = span.set_parent(chat_common::observe::remote_parent(request.headers()));
    let active = crate::metrics::http_request_started();
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    crate::metrics::http_request(&method, &route, status, started.elapsed());
    drop(active);
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid()
        && let Ok(value) = HeaderValue::from_str(&span_context.trace_id().to_string())
    {
        response.headers_mut().insert(TRACE_ID_HEADER, value);
    }
    response
}
