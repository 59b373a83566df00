//! The HTTP server loop. axum's own `serve` gives hyper no timer, so hyper's header-read
//! timeout never fires and a client trickling its headers holds a connection forever;
//! here every connection reads its headers within [`HEADER_READ_TIMEOUT`]. Otherwise
//! the same: TCP_NODELAY, the peer address for `ConnectInfo`, and on shutdown no new
//! connections while those open finish their requests, within `SHUTDOWN_GRACE_SECS`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use chat_common::shutdown::Shutdown;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `signal` resolves, then drains within the grace of
/// `stopping`: `/ready` turns 503, the listener closes (new connections are refused),
/// requests in flight finish (streams relay to their end) and so do the chats running
/// as its tasks, whose client may have left. Streams still running near the end of the
/// grace are interrupted: they charge and save what was generated and tell the client.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    signal: impl Future<Output = ()> + Send + 'static,
    stopping: Shutdown,
) {
    let (stop, stopped) = watch::channel(false);
    accept_until(&listener, &app, signal, &stopped).await;
    drop(stopped);
    let local = listener
        .local_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    drop(listener);
    drain(stop, &stopping, &local).await;
}

/// Accepts connections, each served in a task holding a receiver of `stopped`, until
/// `signal` resolves.
async fn accept_until(
    listener: &TcpListener,
    app: &Router,
    signal: impl Future<Output = ()>,
    stopped: &watch::Receiver<bool>,
) {
    let mut signal = pin!(signal);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Replies and stream events are small writes: send them without Nagle's delay.
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, app.clone(), stopped.clone()));
    }
}

/// With the listener closed: tells every connection to finish, then waits for them
/// and the chats in flight within the grace, and logs how that went.
async fn drain(stop: watch::Sender<bool>, stopping: &Shutdown, local: &str) {
    stopping.begin();
    // Each connection holds a receiver until it is done.
    let connections = stop.receiver_count();
    tracing::info!(
        %local,
        connections,
        chats = stopping.tasks_in_flight(),
        grace_secs = stopping.grace().as_secs(),
        "draining: refusing new connections, finishing requests and chats in flight"
    );
    let _ = stop.send(true);
    let drained = stopping.drain(stop.closed()).await;
    let unfinished = stop.receiver_count();
    if drained.abandoned > 0 || unfinished > 0 {
        tracing::warn!(
            connections_cut = unfinished,
            chats_at_start = drained.tasks_at_start,
            chats_interrupted = drained.interrupted,
            chats_cut = drained.abandoned,
            "drained: grace over with work unfinished"
        );
    } else {
        tracing::info!(
            connections,
            chats_at_start = drained.tasks_at_start,
            chats_interrupted = drained.interrupted,
            "drained: every request and chat finished"
        );
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stopping: watch::Receiver<bool>,
) {
    let service = app.map_request(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service));
    let mut connection = pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        // Shutting down (or the server gone): finish the requests under way, take no more.
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "connection ended with an error");
    }
}
