//! The server side of a gRPC call: its span, continuing the caller's trace, and its
//! `rpc_server_*` metrics, labelled only by what this workspace serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::gauge;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::handles::{self, Method, Methods};
use super::{BoxFuture, OTHER, grpc_status, record_status, remote_parent, service_and_method};

/// The methods this process served, for their spans and `rpc_server_*` metrics.
pub(super) static SERVER_METHODS: Methods = Methods::new(
    "rpc_server_requests_total",
    "rpc_server_request_duration_seconds",
);

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
pub(super) fn server_labels(service: &str, method: &str, code: tonic::Code) -> (String, String) {
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
pub(super) enum Served {
    /// A method served before.
    Known(Arc<Method>),
    /// The path of a call not seen before: a method of ours served for the first time,
    /// or anything a caller sent.
    New(String),
}

impl Served {
    /// The handles of the call, which ended with `code`: the method's own when it is one
    /// of ours (kept from now on), else labelled [`OTHER`] and not kept.
    pub(super) fn handles(&self, code: tonic::Code) -> handles::CallHandles {
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
