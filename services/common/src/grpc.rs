//! gRPC plumbing: lazily connected client channels, per-call deadlines carried to the
//! server in `grpc-timeout`, and a server runner with the standard health service.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::observe::{GrpcClient, GrpcClientLayer, GrpcServerLayer};
use crate::shutdown::Shutdown;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};

/// How long establishing a TCP connection to a service may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A channel that connects on first use and reconnects by itself, so a client can be
/// created once at start even when the service is not up yet. Accepts `host:port` or a URL.
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// A client channel traced and counted by [`GrpcClientLayer`]: what every client of a
/// service is built on.
pub type ObservedChannel = GrpcClient<Channel>;

/// A [`lazy_channel`] under the [`GrpcClientLayer`].
pub fn observed_channel(addr: &str) -> Result<ObservedChannel, tonic::transport::Error> {
    Ok(tower::Layer::layer(&GrpcClientLayer, lazy_channel(addr)?))
}

/// Wraps `message` in a request whose deadline travels to the server as `grpc-timeout`.
pub fn request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

/// The deadline the caller set on `request`, read from its `grpc-timeout` header.
pub fn deadline_of<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(value)
}

/// Parses the gRPC wire format of a timeout: up to 8 digits and a unit letter.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A fresh health service whose overall status (liveness) is SERVING; the entries of
/// the services it serves (readiness) are kept by [`crate::readiness::spawn`].
pub fn health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// A tonic server whose every call is traced and counted (see [`crate::observe`]).
pub type ObservedServer = Server<Stack<GrpcServerLayer, Identity>>;

/// Starts a server builder with tracing and metrics on every call.
pub fn server() -> ObservedServer {
    Server::builder().layer(GrpcServerLayer)
}

/// Serves `router` on `listener` until `signal` resolves, then drains: readiness turns
/// false at once (see [`crate::readiness`]), the listener closes, calls in flight finish
/// (streams included) for at most the grace of `shutdown`; what is left then is cut.
/// Tonic's own graceful shutdown would wait for them forever.
pub async fn serve(
    router: Router<Stack<GrpcServerLayer, Identity>>,
    listener: TcpListener,
    signal: impl Future<Output = ()> + Send,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(%local, "grpc server listening");
    // Small gRPC frames must leave at once: without TCP_NODELAY, Nagle's algorithm and
    // delayed acknowledgements hold them back for tens of milliseconds.
    let incoming = TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            let _ = stream.set_nodelay(true);
        }
        accepted
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        served = server.as_mut() => {
            served?;
            tracing::info!(%local, "grpc server stopped");
            return Ok(());
        }
        () = signal => {}
    }
    shutdown.begin();
    let calls = crate::observe::server_calls_in_flight();
    tracing::info!(
        %local,
        calls,
        grace_secs = shutdown.grace().as_secs(),
        "draining: taking no new calls, finishing those in flight"
    );
    let _ = stop.send(());
    let mut outcome = None;
    shutdown
        .drain(async {
            outcome = Some(server.as_mut().await);
        })
        .await;
    let Some(outcome) = outcome else {
        tracing::warn!(
            %local,
            calls_at_start = calls,
            cut = crate::observe::server_calls_in_flight(),
            "drained: grace over, calls and streams still open are cut"
        );
        return Ok(());
    };
    tracing::info!(%local, calls_at_start = calls, "drained: every call finished");
    outcome?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wire_format_of_timeouts() {
        assert_eq!(parse_grpc_timeout("800m"), Some(Duration::from_millis(800)));
        assert_eq!(parse_grpc_timeout("12S"), Some(Duration::from_secs(12)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
    }

    /// A call that never ends (a health `Watch` stream) does not hold the server past
    /// its grace: tonic alone would wait for it forever.
    #[tokio::test]
    async fn the_drain_ends_with_the_grace_whatever_is_still_open() -> anyhow::Result<()> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (_reporter, health) = health();
        let router = server().add_service(health);
        let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Shutdown::new(1);
        let serving = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                serve(
                    router,
                    listener,
                    async {
                        let _ = signalled.await;
                    },
                    &shutdown,
                )
                .await
            }
        });
        let mut client = HealthClient::new(lazy_channel(&address.to_string())?);
        let mut watch = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner();
        assert!(watch.message().await?.is_some(), "the watch is open");
        let _ = signal.send(());
        let served = tokio::time::timeout(Duration::from_secs(10), serving).await;
        assert!(
            matches!(served, Ok(Ok(Ok(())))),
            "the server stopped at the end of its grace: {served:?}"
        );
        assert!(shutdown.is_draining());
        Ok(())
    }

    #[test]
    fn request_carries_its_deadline() {
        let request = request((), Duration::from_millis(800));
        assert_eq!(deadline_of(&request), Some(Duration::from_millis(800)));
    }
}
