//! Spans and metrics for what crosses a process boundary: gRPC calls on both sides, as
//! tower layers (with W3C trace context carried in the headers), and Redis and MySQL
//! operations.
//! Health checks are neither traced nor counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{TraceContextExt, TraceFlags};
use tonic::{Request, Status};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The canonical name of a gRPC status code, as used in metric labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

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

mod handles;

use handles::{Method, Methods};

/// The methods this process called, for their spans and `rpc_client_*` metrics.
static CLIENT_METHODS: Methods = Methods::new(
    "rpc_client_requests_total",
    "rpc_client_request_duration_seconds",
);

/// The methods this process served, for their spans and `rpc_server_*` metrics.
static SERVER_METHODS: Methods = Methods::new(
    "rpc_server_requests_total",
    "rpc_server_request_duration_seconds",
);

/// Writes the span's W3C trace context (`traceparent`, and `tracestate` when there is
/// one) into an outgoing request's headers: what the W3C propagator writes, without its
/// formatting through `String`s (it was 2.7 % of the gateway's instructions). The values
/// are marked sensitive, which only tells HPACK not to add them to its table: each call
/// has its own, and indexing them cost every call a table insertion and eviction.
fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
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
fn parse_traceparent(value: &[u8]) -> Option<opentelemetry::trace::SpanContext> {
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

/// How long a client call may take until the server starts answering, enforced by
/// [`GrpcClientLayer`] (a server that never answers cannot hang the caller). A unary
/// call also sends it as `grpc-timeout`; a stream's deadline bounds only its opening,
/// and its caller bounds the wait for each message.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Duration);

impl Deadline {
    /// A unary request: the deadline is enforced here and sent to the server.
    pub fn unary<M>(self, message: M) -> Request<M> {
        let mut request = crate::grpc::request(message, self.0);
        request.extensions_mut().insert(self);
        request
    }

    /// A streaming request: the deadline bounds the opening only, so it is not sent.
    pub fn opening<M>(self, message: M) -> Request<M> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(self);
        request
    }
}

/// Tower layer for tonic client channels: a client span per call with the W3C trace
/// context in the request, the call's [`Deadline`] enforced, and `rpc_client_*`
/// metrics by service, method and status code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClientLayer;

impl<S> tower::Layer<S> for GrpcClientLayer {
    type Service = GrpcClient<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcClient { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcClient<S> {
    inner: S,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcClient<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = CLIENT_METHODS.get_or_add(request.uri().path());
        let span = tracing::info_span!(
            "grpc call",
            otel.name = &*method.name,
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = &*method.service,
            rpc.method = &*method.method,
            rpc.grpc.status_code = Empty,
        );
        inject_trace_context(&span, request.headers_mut());
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        let started = Instant::now();
        let future = inner.call(request);
        Box::pin(
            async move {
                let outcome = match deadline {
                    Some(deadline) => match tokio::time::timeout(deadline, future).await {
                        Ok(outcome) => outcome.map_err(Into::into),
                        Err(_) => Err(Box::new(Status::deadline_exceeded(format!(
                            "no answer within {} ms",
                            deadline.as_millis()
                        ))) as BoxError),
                    },
                    None => future.await.map_err(Into::into),
                };
                let code = match &outcome {
                    Ok(response) => grpc_status(response.headers()),
                    Err(error) => error
                        .downcast_ref::<Status>()
                        .map_or(tonic::Code::Unavailable, Status::code),
                };
                record_status(&tracing::Span::current(), code);
                let handles = method.handles(code);
                handles.requests.increment(1);
                handles.duration.record(started.elapsed());
                outcome
            }
            .instrument(span),
        )
    }
}

/// The label of what a metric cannot name without letting callers grow its label set.
pub const OTHER: &str = "_OTHER";

/// The gRPC services of this workspace: a server's metrics name one of these, or
/// [`OTHER`] for a path naming none (its callers could otherwise make up any number).
const KNOWN_SERVICES: [&str; 6] = [
    chat_proto::filter_service_server::SERVICE_NAME,
    chat_proto::token_service_server::SERVICE_NAME,
    chat_proto::llm_service_server::SERVICE_NAME,
    chat_proto::history_service_server::SERVICE_NAME,
    chat_proto::account_service_server::SERVICE_NAME,
    chat_proto::keyword_service_server::SERVICE_NAME,
];

/// The `service` and `method` labels of a server call: as called for a known service
/// and a method it has (it did not answer UNIMPLEMENTED), else [`OTHER`].
fn server_labels(service: &str, method: &str, code: tonic::Code) -> (String, String) {
    if !KNOWN_SERVICES.contains(&service) {
        return (OTHER.to_owned(), OTHER.to_owned());
    }
    let method = if code == tonic::Code::Unimplemented {
        OTHER
    } else {
        method
    };
    (service.to_owned(), method.to_owned())
}

/// `("chat.v1.FilterService", "Filter")` from `/chat.v1.FilterService/Filter`.
fn service_and_method(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

/// The status of a response from its headers. Tonic answers errors as trailers-only
/// responses, with the status in the headers; a response without one carries OK in
/// its trailers.
fn grpc_status(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

fn record_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// One Redis or MySQL operation: a client span with the database conventions, and
/// `db_client_operation_duration_seconds` / `db_client_errors_total`.
///
/// `work` is boxed at once, before the returned future exists: a client's futures run to
/// kilobytes (a pooled Redis call with its timeout, 14 KB), and every layer that holds one
/// by value copies all of it each time it is moved (`memcpy` was a third of the history
/// service's instructions; boxed, the service runs a fifth fewer per chat).
pub fn db<T, E: std::fmt::Display>(
    system: &'static str,
    operation: &'static str,
    work: impl Future<Output = Result<T, E>>,
) -> impl Future<Output = Result<T, E>> {
    let work = Box::pin(work);
    async move {
        let span = tracing::info_span!(
            "db call",
            otel.name = format!("{system} {operation}"),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = system,
            db.operation.name = operation,
        );
        let started = Instant::now();
        let outcome = work.instrument(span.clone()).await;
        handles::db_duration(system, operation).record(started.elapsed());
        if let Err(error) = &outcome {
            let labels = [("system", system), ("operation", operation)];
            span.record("otel.status_code", "ERROR");
            tracing::warn!(parent: &span, %error, system, operation, "database call failed");
            counter!("db_client_errors_total", &labels).increment(1);
        }
        outcome
    }
}

/// Tower layer for tonic servers: a server span continuing the caller's trace, and
/// `rpc_server_*` metrics by method and status code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> tower::Layer<S> for GrpcServerLayer {
    type Service = GrpcServer<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServer { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServer<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcServer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service is the one to call; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if path.starts_with("/grpc.health") {
            return Box::pin(inner.call(request));
        }
        // A method served before is kept; any other path is labelled from scratch, and
        // kept only once it proved to be a method of ours (see `Served`).
        let served = match SERVER_METHODS.find(path) {
            Some(method) => Served::Known(method),
            None => Served::New(path.to_owned()),
        };
        let span = {
            let new_name;
            let (service, method, name) = match &served {
                Served::Known(known) => (&*known.service, &*known.method, &*known.name),
                Served::New(path) => {
                    let (service, method) = service_and_method(path);
                    new_name = format!("{service}/{method}");
                    (service, method, new_name.as_str())
                }
            };
            tracing::info_span!(
                "grpc request",
                otel.name = name,
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = Empty,
            )
        };
        let _ = span.set_parent(remote_parent(request.headers()));
        // Decremented when the call ends however it ends, cancelled mid-way included.
        let active = ActiveCall::start(served.active_gauge());
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            inner.call(request)
        };
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            let code = match &result {
                Ok(response) => grpc_status(response.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            record_status(&span, code);
            let handles = served.handles(code);
            handles.requests.increment(1);
            handles.duration.record(started.elapsed());
            drop(active);
            result
        })
    }
}

/// What a server call's metrics are labelled by.
enum Served {
    /// A method served before.
    Known(Arc<Method>),
    /// The path of a call not seen before: a method of ours served for the first time,
    /// or anything a caller sent.
    New(String),
}

impl Served {
    /// The handles of the call, which ended with `code`: the method's own when it is one
    /// of ours (kept from now on), else labelled [`OTHER`] and not kept.
    fn handles(&self, code: tonic::Code) -> handles::CallHandles {
        match self {
            Self::Known(method) => method.handles(code),
            Self::New(path) => {
                let (service, method) = service_and_method(path);
                match server_labels(service, method, code) {
                    (service, method) if service != OTHER && method != OTHER => {
                        SERVER_METHODS.get_or_add(path).handles(code)
                    }
                    (service, method) => {
                        handles::register(SERVER_METHODS.names(), &service, &method, code)
                    }
                }
            }
        }
    }

    fn active_gauge(&self) -> metrics::Gauge {
        match self {
            Self::Known(method) => method.active(),
            Self::New(path) => {
                let (service, _) = service_and_method(path);
                let (service, _) = server_labels(service, "", tonic::Code::Ok);
                gauge!("rpc_server_active_requests", "service" => service)
            }
        }
    }
}

/// Server calls in flight in this process (every server of it), for the drain's logs.
static CALLS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The gRPC server calls this process is serving now (a stream counts until its answer
/// begins, as in `rpc_server_active_requests`).
pub fn server_calls_in_flight() -> usize {
    CALLS_IN_FLIGHT.load(Ordering::Relaxed)
}

/// One server call in `rpc_server_active_requests` until dropped: a call whose future
/// is dropped (the client cancelled, the deadline passed) leaves the gauge too.
struct ActiveCall(metrics::Gauge);

impl ActiveCall {
    fn start(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        CALLS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.0.decrement(1.0);
        CALLS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
