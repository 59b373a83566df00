//! Spans and metrics for what crosses a process boundary: gRPC calls on both sides, as
//! tower layers (with W3C trace context carried in the headers), and Redis and MySQL
//! operations.
//! Health checks are neither traced nor counted.
//!
//! Here: the client layer and `db`. The server layer is in `server`, the trace context
//! written and read on each call in `trace_context`, and each method's metric handles
//! and labels, made once, in `handles`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use metrics::counter;
use tonic::{Request, Status};
use tracing::Instrument;
use tracing::field::Empty;

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

mod handles;
mod server;
mod trace_context;

use handles::Methods;
pub use server::{GrpcServer, GrpcServerLayer, server_calls_in_flight};
use trace_context::inject_trace_context;
pub use trace_context::{HeaderExtractor, remote_parent};

/// The methods this process called, for their spans and `rpc_client_*` metrics.
static CLIENT_METHODS: Methods = Methods::new(
    "rpc_client_requests_total",
    "rpc_client_request_duration_seconds",
);

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
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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

#[cfg(test)]
mod tests;
