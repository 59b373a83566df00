//! Plumbing shared by every service of the chat backend.
//!
//! Nothing here knows about chats: settings loading, logging set-up, the error codes
//! that cross service boundaries, gRPC client and server set-up, Redis connections,
//! token counting. Test fixtures live in `chat-testing`.

pub mod error;
pub mod grpc;
pub mod healthcheck;
pub mod metrics;
pub mod observe;
pub mod readiness;
pub mod redis;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tokens;
pub mod user;

pub use error::ErrorCode;

/// Turns the outcome of a service's `main` into its exit code, printing a failure as
/// one line with its causes (`chat-token: invalid configuration: ... key "DAILY_LIMIT"`)
/// rather than a backtrace: at start-up the logger may not exist yet.
#[allow(clippy::print_stderr)]
pub fn exit_code(service: &str, outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stopped");
            eprintln!("chat-{service}: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `addr`, saying which address when that fails.
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C), so servers can
/// finish in-flight requests before exiting (within `SHUTDOWN_GRACE_SECS`, see
/// [`shutdown`]).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
