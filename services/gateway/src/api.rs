//! The chat API of the original's clients and the UI: `/chat`, `/chat/stream`,
//! `/history`, `/quota`. Each request is authenticated, then limited, then read.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use crate::ApiError;
use crate::auth::{Caller, acting_user};
use crate::chat::{ChatRequest, StreamEvent};
use crate::routes::AppState;

/// Who is calling and for whom: what the reading routes check first. Reads spend the
/// caller's read allowance (`READ_RATE_LIMIT_PER_MINUTE`), not their chats: opening the
/// page reads the history and the quota.
pub(crate) async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    claimed: Option<String>,
) -> Result<Caller, ApiError> {
    let caller = state.auth.caller(headers).await?;
    acting_user(caller, claimed)
}

/// A body within the size limit (`MAX_BODY_BYTES`): past it 413, else unreadable is 400.
pub(crate) fn body_within_limit(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(state.max_body_bytes),
        _ => ApiError::BadJson(rejection.body_text()),
    })
}

/// The body of a chat: JSON within the size limit.
fn chat_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<ChatRequest, ApiError> {
    let body = body_within_limit(state, body)?;
    serde_json::from_slice(&body).map_err(|error| ApiError::BadJson(error.to_string()))
}

/// Authenticates before reading the body, so an anonymous caller learns nothing from
/// how their body is judged. (The caller's rate limit was checked before, by the
/// router's `rate_limit::enforce`.)
async fn admit_chat(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Caller, String, Option<String>), ApiError> {
    let credentialed = state.auth.caller(headers).await?;
    let request = chat_body(state, body)?;
    let caller = acting_user(credentialed, request.user_id)?;
    Ok((caller, request.text, request.conversation_id))
}

pub async fn chat(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (caller, text, conversation) = admit_chat(&state, &headers, body).await?;
    // In a task of its own: a client that hangs up cannot cut the chat short, and a
    // shutdown waits for it.
    let stopping = state.stopping.clone();
    let task = async move {
        crate::chat::chat(&state.backends, &state.policy, caller, text, conversation).await
    };
    let answer = stopping
        .spawn(task.in_current_span())
        .await
        .map_err(|error| {
            ApiError::dependency("gateway", tonic::Status::internal(error.to_string()))
        })??;
    Ok(Json(answer).into_response())
}

pub async fn chat_stream(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (caller, text, conversation) = admit_chat(&state, &headers, body).await?;
    let permit = state.admission.open_stream(&caller.user_id)?;
    let events = state
        .stopping
        .open(|head| {
            crate::chat::chat_stream(
                state.backends.clone(),
                state.policy.clone(),
                caller,
                text,
                conversation,
                head,
                state.stopping.clone(),
            )
        })
        .await
        .ok_or_else(|| {
            ApiError::dependency("gateway", tonic::Status::internal("chat task ended"))
        })??;
    Ok(crate::admission::sse_holding(permit, events, sse_event))
}

fn sse_event(event: StreamEvent) -> Event {
    let (name, data) = match event {
        StreamEvent::Start {
            cleaned,
            trace_id,
            conversation_id,
        } => (
            "start",
            json!({"cleaned": cleaned, "trace_id": trace_id, "conversation_id": conversation_id}),
        ),
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

#[derive(Debug, Default, Deserialize)]
struct UserQuery {
    user_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The caller of a reading route (`?user_id=` names them, or is left out), and the page
/// asked for: `limit`, and the `cursor` of a paged listing.
pub struct Reader {
    pub caller: Caller,
    pub limit: u32,
    pub cursor: String,
}

impl FromRequestParts<Arc<AppState>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Query(query) = Query::<UserQuery>::try_from_uri(&parts.uri)
            .map_err(|rejection| ApiError::BadJson(rejection.body_text()))?;
        let caller = admit(state, &parts.headers, query.user_id).await?;
        Ok(Self {
            caller,
            limit: query.limit.unwrap_or(0),
            cursor: query.cursor.unwrap_or_default(),
        })
    }
}

#[derive(Debug, Serialize)]
struct HistoryItem {
    role: &'static str,
    text: String,
    created_at_ms: i64,
    /// A reply cut short: the client left or the stream broke.
    incomplete: bool,
}

pub async fn history(
    State(state): State<Arc<AppState>>,
    Reader { caller, limit, .. }: Reader,
) -> Result<Response, ApiError> {
    let messages = state
        .backends
        .history(&caller.user_id, limit)
        .await
        .map_err(|status| ApiError::dependency("history", status))?;
    let items: Vec<HistoryItem> = messages
        .into_iter()
        .map(|message| HistoryItem {
            role: crate::conversations::role_name(message.role()),
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

pub async fn quota(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
) -> Result<Response, ApiError> {
    let quota = state
        .backends
        .remaining(&caller.user_id, caller.daily_limit)
        .await
        .map_err(|status| ApiError::dependency("token", status))?;
    Ok(Json(QuotaBody {
        remaining: quota.remaining,
        limit: quota.limit,
        reset_after_seconds: quota.reset_after_seconds,
    })
    .into_response())
}
