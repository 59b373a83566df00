//! HTTP gateway (:8080): the chat API and the browser UI on one port, in front of the
//! gRPC services. The whole request path of a chat is in [`chat`].
//!
//! | route | what |
//! |---|---|
//! | `POST /chat` | filter → quota reserve → llm → quota settle → history save |
//! | `GET /history?user_id=` | the user's recent messages, oldest first |
//! | `GET /health` | `ok` |
//! | anything else (GET) | the browser UI |

mod backends;
pub mod chat;
mod error;
mod metrics;
mod observe;
mod rate_limit;
mod routes;
mod settings;

use std::future::Future;

use tokio::net::TcpListener;

pub use backends::Backends;
pub use error::ApiError;
pub use settings::Settings;

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.gateway_metrics_listen).await?;
    metrics::describe();
    chat_common::tokens::warm_up();
    let app = routes::router(&settings)?;
    tracing::info!(local = %listener.local_addr()?, "gateway listening");
    // Replies and stream events are small writes: send them without Nagle's delay.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("gateway stopped");
    Ok(())
}
