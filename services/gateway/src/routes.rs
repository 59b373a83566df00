//! HTTP routes: the JSON API and the browser UI.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chat_common::user::validate_user_id;
use chat_proto::Role;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use crate::chat::{ChatRequest, Policy, StreamEvent};
use crate::rate_limit::Limiter;
use crate::{ApiError, Backends, Settings};

/// The browser UI, compiled into the binary so an image needs no extra files.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

struct AppState {
    backends: Backends,
    policy: Policy,
    limiter: Option<Limiter>,
    max_body_bytes: usize,
}

pub fn router(settings: &Settings) -> anyhow::Result<Router> {
    let state = Arc::new(AppState {
        backends: Backends::connect(settings)?,
        policy: Policy::from(settings),
        limiter: Limiter::per_minute(settings.rate_limit_per_minute, settings.rate_limit_burst),
        max_body_bytes: settings.max_body_bytes,
    });
    Ok(Router::new()
        .route("/chat", post(chat))
        .route("/chat/stream", post(chat_stream))
        .route("/history", get(history))
        .route("/quota", get(quota))
        .route("/health", get(health))
        .route("/", get(index))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(axum::middleware::from_fn(crate::observe::observe))
        .with_state(state))
}

/// The limiter, then the body: what both chat routes check first.
fn admit(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<ChatRequest, ApiError> {
    if let Some(limiter) = &state.limiter {
        limiter.check().map_err(|wait| {
            crate::metrics::rate_limited();
            ApiError::RateLimited(wait)
        })?;
    }
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(state.max_body_bytes),
        _ => ApiError::BadJson(rejection.body_text()),
    })?;
    serde_json::from_slice(&body).map_err(|error| ApiError::BadJson(error.to_string()))
}

async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = admit(&state, body)?;
    // In a task of its own: a client that hangs up cannot cut the chat short.
    let task = async move { crate::chat::chat(&state.backends, &state.policy, request).await };
    let answer = tokio::spawn(task.in_current_span())
        .await
        .map_err(|error| {
            ApiError::dependency("gateway", tonic::Status::internal(error.to_string()))
        })??;
    Ok(Json(answer).into_response())
}

async fn chat_stream(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = admit(&state, body)?;
    let (head, answer) = oneshot::channel();
    let task =
        crate::chat::chat_stream(state.backends.clone(), state.policy.clone(), request, head);
    tokio::spawn(task.in_current_span());
    let events = answer.await.map_err(|_| {
        ApiError::dependency("gateway", tonic::Status::internal("chat task ended"))
    })??;
    let events = ReceiverStream::new(events).map(|event| Ok::<_, Infallible>(sse_event(event)));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn sse_event(event: StreamEvent) -> Event {
    let (name, data) = match event {
        StreamEvent::Start { cleaned, trace_id } => {
            ("start", json!({"cleaned": cleaned, "trace_id": trace_id}))
        }
        StreamEvent::Delta(text) => ("delta", json!({"text": text})),
        StreamEvent::Done {
            usage,
            remaining,
            model,
            history_saved,
        } => (
            "done",
            json!({"usage": usage, "remaining": remaining, "model": model, "history_saved": history_saved}),
        ),
        StreamEvent::Failed(error) => {
            let mut body = error.body();
            body["incomplete"] = true.into();
            ("error", body)
        }
    };
    Event::default().event(name).data(data.to_string())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    user_id: Option<String>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct HistoryItem {
    role: &'static str,
    text: String,
    created_at_ms: i64,
    /// A reply cut short: the client left or the stream broke.
    incomplete: bool,
}

async fn history(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = query
        .as_ref()
        .ok()
        .and_then(|Query(query)| query.limit)
        .unwrap_or(0);
    let user_id = user_id_from(query)?;
    let messages = state
        .backends
        .history(&user_id, limit)
        .await
        .map_err(|status| ApiError::dependency("history", status))?;
    let items: Vec<HistoryItem> = messages
        .into_iter()
        .map(|message| HistoryItem {
            role: match message.role() {
                Role::Assistant => "assistant",
                _ => "user",
            },
            text: message.text,
            created_at_ms: message.created_at_unix_ms,
            incomplete: message.incomplete,
        })
        .collect();
    Ok(Json(items).into_response())
}

#[derive(Debug, Serialize)]
struct QuotaBody {
    remaining: i64,
    limit: i64,
    reset_after_seconds: i64,
}

async fn quota(
    State(state): State<Arc<AppState>>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let user_id = user_id_from(query)?;
    let quota = state
        .backends
        .remaining(&user_id)
        .await
        .map_err(|status| ApiError::dependency("token", status))?;
    Ok(Json(QuotaBody {
        remaining: quota.remaining,
        limit: quota.limit,
        reset_after_seconds: quota.reset_after_seconds,
    })
    .into_response())
}

/// The validated `user_id` query parameter.
fn user_id_from(
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<String, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::BadJson(rejection.body_text()))?;
    let user_id = query
        .user_id
        .ok_or_else(|| ApiError::BadJson("the user_id query parameter is required".to_owned()))?;
    validate_user_id(&user_id).map_err(|error| ApiError::InvalidUserId(error.to_string()))?;
    Ok(user_id)
}

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
