//! HTTP gateway (:8080): the chat API, the browser UI, the login and the admin API on
//! one port, in front of the gRPC services. The request path of a chat is in [`chat`];
//! who is calling is in [`auth`].
//!
//! | route | what |
//! |---|---|
//! | `POST /chat`, `POST /chat/stream` | authenticate → limit → filter ‖ context → reserve → llm → settle ‖ save |
//! | `GET /history`, `GET /quota` | the caller's recent messages (oldest first) and quota |
//! | `/conversations...`, `DELETE /history` | the caller's conversations; erase all of them |
//! | `POST /v1/chat/completions`, `GET /v1/models` | OpenAI's API for OpenAI's clients, the same path as `/chat` (`openai`) |
//! | `POST /auth/login`, `POST /auth/logout`, `GET /auth/me` | the UI's session |
//! | `/admin/...` | users, limits and API keys, with `ADMIN_API_KEY` |
//! | `GET /health` | `ok` while the process runs (liveness) |
//! | `GET /ready` | 200 when the services a chat needs are ready, else 503 naming them; 503 while shutting down |
//! | anything else (GET) | the browser UI (under `/v1/`, a JSON 404) |

mod admin;
mod admission;
mod api;
pub mod auth;
mod backends;
mod bootstrap;
pub mod chat;
pub mod cli;
mod conversations;
mod error;
mod guard;
mod login;
mod metrics;
mod observe;
mod openai;
mod rate_limit;
mod ready;
mod routes;
mod search;
mod server;
mod settings;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use backends::Backends;
pub use error::ApiError;
pub use settings::{AuthMode, RetrievalScope, Settings, Switch};

/// Serves the gateway on `listener` until `shutdown` resolves, then lets in-flight
/// requests and chats finish within `SHUTDOWN_GRACE_SECS` (see [`server::serve`]).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.gateway_metrics_listen).await?;
    metrics::describe();
    chat_common::tokens::warm_up();
    let backends = Backends::connect(&settings)?;
    let state = Arc::new(routes::AppState::new(&settings, backends.clone())?);
    let stopping = state.stopping.clone();
    match settings.auth_mode {
        AuthMode::Required => {
            tokio::spawn(bootstrap::first_user(
                backends,
                settings.admin_password.clone(),
            ));
        }
        AuthMode::None => tracing::warn!(
            "AUTH_MODE=none: authentication is off, any caller can act as any user; for local trials only"
        ),
    }
    let app = routes::router(&settings, state);
    tracing::info!(local = %listener.local_addr()?, auth_mode = ?settings.auth_mode, "gateway listening");
    server::serve(listener, app, shutdown, stopping).await;
    tracing::info!("gateway stopped");
    Ok(())
}
