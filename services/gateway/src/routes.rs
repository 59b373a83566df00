//! The router: every route of the gateway and the layers around them.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use chat_common::shutdown::Shutdown;
use serde_json::json;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::admission::Admission;
use crate::auth::{AdminKey, Authenticator};
use crate::chat::Policy;
use crate::guard::Origins;
use crate::login::CookieSecure;
use crate::rate_limit::Limiter;
use crate::ready::Readiness;
use crate::{ApiError, Backends, Settings, admin, api, conversations, login};

/// The browser UI, compiled into the binary so an image needs no extra files.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// What the handlers share.
pub struct AppState {
    pub backends: Backends,
    pub policy: Policy,
    pub auth: Authenticator,
    pub admin: AdminKey,
    /// The shared rate limiter, applied to every route by [`crate::rate_limit::enforce`].
    pub limiter: Limiter,
    /// The caps on streams at once, taken by each streaming handler.
    pub admission: Admission,
    pub max_body_bytes: usize,
    pub cookie_secure: CookieSecure,
    /// The shutdown: every chat runs as one of its tasks, so a stop waits for it, and
    /// `/ready` turns 503 once it begins.
    pub stopping: Shutdown,
    /// What `/ready` asks of the services.
    pub readiness: Readiness,
}

impl AppState {
    pub fn new(settings: &Settings, backends: Backends) -> anyhow::Result<Self> {
        let stopping = Shutdown::new(settings.shutdown_grace_secs);
        let backends = backends.with_shutdown(stopping.clone());
        Ok(Self {
            auth: Authenticator::new(
                settings.auth_mode,
                backends.clone(),
                std::time::Duration::from_millis(settings.auth_cache_ttl_ms),
                std::time::Duration::from_millis(settings.auth_stale_ttl_ms),
            ),
            admin: AdminKey::new(settings.admin_api_key.as_ref()),
            policy: Policy::from(settings),
            limiter: Limiter::new(settings)?,
            admission: Admission::new(settings),
            max_body_bytes: settings.max_body_bytes,
            cookie_secure: CookieSecure::from_setting(&settings.cookie_secure)?,
            stopping,
            readiness: Readiness::new(settings)?,
            backends,
        })
    }
}

pub fn router(settings: &Settings, state: Arc<AppState>) -> Router {
    let origins = Arc::new(Origins::from_setting(&settings.allowed_origins));
    let routes = Router::new()
        .merge(chat_routes())
        .merge(conversation_routes())
        .merge(account_routes())
        .merge(crate::openai::routes(settings))
        .route("/", get(index))
        .route_layer(axum::middleware::from_fn_with_state(
            origins,
            crate::guard::refuse_cross_site,
        ))
        .fallback(fallback);
    with_layers(routes, settings, &state)
        // The probes, after every layer: never limited, shed, traced or counted, so a
        // gateway under load is not thought dead.
        .route("/health", get(health))
        .route("/ready", get(crate::ready::ready))
        .with_state(state)
}

/// Chatting and what a user reads about it: the replies, history, quota and search.
fn chat_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/chat", post(api::chat))
        .route("/chat/stream", post(api::chat_stream))
        .route("/history", get(api::history).delete(conversations::erase))
        .route("/quota", get(api::quota))
        .route("/search", get(crate::search::search))
}

/// A user's conversations and their messages.
fn conversation_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route(
            "/conversations/{conversation_id}",
            get(conversations::get)
                .patch(conversations::rename)
                .delete(conversations::delete),
        )
        .route(
            "/conversations/{conversation_id}/messages",
            get(conversations::messages),
        )
}

/// Accounts: the browser's session, and the users and keys the admin manages.
fn account_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/auth/login", post(login::login))
        .route("/auth/logout", post(login::logout))
        .route("/auth/me", get(login::me))
        .route("/admin/users", post(admin::post_user))
        .route(
            "/admin/users/{user_id}",
            get(admin::read_user).patch(admin::patch_user),
        )
        .route(
            "/admin/users/{user_id}/keys",
            post(admin::post_key).get(admin::get_keys),
        )
        .route("/admin/keys/{key_id}", delete(admin::delete_key))
}

/// The layers around every route so far, innermost first: the rate limit, the body
/// limit, load shedding, then OpenAI's error shape, security headers and observation.
fn with_layers(
    routes: Router<Arc<AppState>>,
    settings: &Settings,
    state: &Arc<AppState>,
) -> Router<Arc<AppState>> {
    routes
        // Every route above, and any merged or nested in before this line, is rate limited
        // by its matched path (see `rate_limit::class_of`); unmatched paths are the UI.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(state),
            crate::rate_limit::enforce,
        ))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(
            // One count for the whole router (not per route); past it, 503 at once.
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    crate::metrics::shed(crate::metrics::Shed::Requests);
                    ApiError::Overloaded
                }))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(
                    settings.max_concurrent_requests.max(1),
                )),
        )
        // Outside every layer that can refuse, so a /v1 client gets OpenAI's error shape.
        .layer(axum::middleware::from_fn(crate::openai::openai_errors))
        .layer(axum::middleware::from_fn(crate::guard::security_headers))
        .layer(axum::middleware::from_fn(crate::observe::observe))
}

/// Liveness: the process answers, whatever its dependencies do.
async fn health() -> &'static str {
    "ok"
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// Unknown paths serve the UI (client-side routes); other methods get a JSON 404.
async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        return ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response();
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not found", "code": "not_found", "detail": "no such endpoint"})),
    )
        .into_response()
}
