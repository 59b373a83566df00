//! W3C trace context on gRPC calls: written into a client call's headers, read from a
//! server call's. Both handle the common case themselves (the W3C propagator formatted
//! and parsed it through `String`s and `Vec`s on every call) and leave anything else to
//! the propagator, whose reading is the reference the tests compare with.

use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceFlags};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads W3C trace context from HTTP headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes the span's W3C trace context (`traceparent`, and `tracestate` when there is
/// one) into an outgoing request's headers: what the W3C propagator writes, without its
/// formatting through `String`s (it was 2.7 % of the gateway's instructions). The values
/// are marked sensitive, which only tells HPACK not to add them to its table: each call
/// has its own, and indexing them cost every call a table insertion and eviction.
pub(super) fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    use std::io::Write;

    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() {
        return;
    }
    let mut traceparent = [0_u8; 55];
    let written = write!(
        &mut traceparent[..],
        "00-{}-{}-{:02x}",
        span_context.trace_id(),
        span_context.span_id(),
        span_context.trace_flags() & TraceFlags::SAMPLED
    );
    if written.is_ok()
        && let Ok(mut value) = http::HeaderValue::from_bytes(&traceparent)
    {
        value.set_sensitive(true);
        headers.insert(http::header::HeaderName::from_static("traceparent"), value);
    }
    let state = span_context.trace_state().header();
    if !state.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(&state)
    {
        headers.insert(http::header::HeaderName::from_static("tracestate"), value);
    }
}

/// The trace context of the HTTP request's headers, for a server span to continue.
/// The common case, a `traceparent` of version 00 and no `tracestate` (what every hop
/// of ours sends), is read here directly; anything else goes to the W3C propagator,
/// whose reading of it is the reference (this one is tested against it).
pub fn remote_parent(headers: &http::HeaderMap) -> opentelemetry::Context {
    if !headers.contains_key("tracestate")
        && let Some(parent) = headers
            .get("traceparent")
            .and_then(|value| parse_traceparent(value.as_bytes()))
    {
        return opentelemetry::Context::new().with_remote_span_context(parent);
    }
    global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)))
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, lowercase, with valid ids;
/// `None` for anything else, including other versions (for the propagator to judge).
pub(super) fn parse_traceparent(value: &[u8]) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceId, TraceState};

    fn hex(digits: &[u8]) -> Option<u128> {
        digits.iter().try_fold(0_u128, |number, digit| {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => return None,
            };
            Some(number << 4 | u128::from(value))
        })
    }
    if value.len() != 55 || !value.starts_with(b"00-") || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from(hex(&value[3..35])?);
    let span_id = SpanId::from(u64::try_from(hex(&value[36..52])?).ok()?);
    let flags = TraceFlags::new(u8::try_from(hex(&value[53..55])?).ok()?) & TraceFlags::SAMPLED;
    let parent = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    parent.is_valid().then_some(parent)
}
