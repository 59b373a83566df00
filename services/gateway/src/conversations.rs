//! The caller's conversations: `/conversations...`, and `DELETE /history` (erase all).
//! Authenticated like `/history` (a credential, or `?user_id=` in trust mode); every call
//! names the caller to the history service, so another user's conversation is a 404
//! exactly like an unknown one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat_common::grpc::ObservedChannel;
use chat_proto::history_service_client::HistoryServiceClient;
use chat_proto::{
    Conversation, ConversationRequest, CreateConversationRequest, EraseUserRequest,
    ListConversationMessagesRequest, ListConversationsRequest, RenameConversationRequest, Role,
    StoredMessage,
};
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status};

use crate::ApiError;
use crate::api::Reader;
use crate::routes::AppState;

/// One call to the history service about the caller's conversations (`patient`: see
/// [`Backends::conversations`](crate::Backends::conversations)); its refusals are the
/// caller's.
async fn ask<M, T, Fut>(
    state: &AppState,
    message: M,
    patient: bool,
    call: impl FnOnce(HistoryServiceClient<ObservedChannel>, Request<M>) -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    state
        .backends
        .conversations(message, patient, call)
        .await
        .map_err(refused)
}

/// The history service's answer about conversations: its refusals are the caller's.
fn refused(status: Status) -> ApiError {
    match status.code() {
        Code::NotFound => ApiError::NotFound("no such conversation".to_owned()),
        Code::InvalidArgument => ApiError::InvalidField(status.message().to_owned()),
        _ => ApiError::dependency("history", status),
    }
}

#[derive(Debug, Serialize)]
struct ConversationBody {
    id: String,
    title: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    message_count: i64,
}

impl From<Conversation> for ConversationBody {
    fn from(conversation: Conversation) -> Self {
        Self {
            id: conversation.id,
            title: conversation.title,
            created_at_ms: conversation.created_at_unix_ms,
            updated_at_ms: conversation.updated_at_unix_ms,
            message_count: conversation.message_count,
        }
    }
}

#[derive(Debug, Serialize)]
struct MessageBody {
    id: i64,
    role: &'static str,
    text: String,
    created_at_ms: i64,
    incomplete: bool,
}

impl From<StoredMessage> for MessageBody {
    fn from(message: StoredMessage) -> Self {
        Self {
            id: message.id,
            role: role_name(message.role()),
            text: message.text,
            created_at_ms: message.created_at_unix_ms,
            incomplete: message.incomplete,
        }
    }
}

/// A stored message's speaker as the UI names it: the assistant, or the user.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Assistant => "assistant",
        _ => "user",
    }
}

/// The body of a create or a rename.
#[derive(Debug, Default, Deserialize)]
struct TitleBody {
    #[serde(default)]
    title: Option<String>,
}

/// A JSON body within the size limit; an empty one is `{}`.
fn title_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<TitleBody, ApiError> {
    let body = crate::api::body_within_limit(state, body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TitleBody::default());
    }
    serde_json::from_slice(&body).map_err(|error| ApiError::BadJson(error.to_string()))
}

fn next_cursor(cursor: String) -> Option<String> {
    (!cursor.is_empty()).then_some(cursor)
}

/// `POST /conversations` `{"title": "..."}` (optional) → 201 and the conversation.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = title_body(&state, body)?;
    let request = CreateConversationRequest {
        user_id: caller.user_id,
        title: body.title.unwrap_or_default(),
    };
    let created = ask(&state, request, false, async |mut client, request| {
        client.create_conversation(request).await
    })
    .await?;
    Ok((StatusCode::CREATED, Json(ConversationBody::from(created))).into_response())
}

#[derive(Debug, Serialize)]
struct ConversationsPage {
    conversations: Vec<ConversationBody>,
    next_cursor: Option<String>,
}

/// `GET /conversations?limit=&cursor=` → the caller's conversations, newest activity
/// first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Reader {
        caller,
        limit,
        cursor,
    }: Reader,
) -> Result<Response, ApiError> {
    let request = ListConversationsRequest {
        user_id: caller.user_id,
        limit,
        cursor,
    };
    let page = ask(&state, request, false, async |mut client, request| {
        client.list_conversations(request).await
    })
    .await?;
    Ok(Json(ConversationsPage {
        conversations: page.conversations.into_iter().map(Into::into).collect(),
        next_cursor: next_cursor(page.next_cursor),
    })
    .into_response())
}

/// `GET /conversations/{id}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
    Path(conversation_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = ConversationRequest {
        user_id: caller.user_id,
        conversation_id,
    };
    let conversation = ask(&state, request, false, async |mut client, request| {
        client.get_conversation(request).await
    })
    .await?;
    Ok(Json(ConversationBody::from(conversation)).into_response())
}

/// `PATCH /conversations/{id}` `{"title": "..."}` → the renamed conversation.
pub async fn rename(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
    Path(conversation_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let title = title_body(&state, body)?
        .title
        .ok_or_else(|| ApiError::BadJson("title is required".to_owned()))?;
    let request = RenameConversationRequest {
        user_id: caller.user_id,
        conversation_id,
        title,
    };
    let renamed = ask(&state, request, false, async |mut client, request| {
        client.rename_conversation(request).await
    })
    .await?;
    Ok(Json(ConversationBody::from(renamed)).into_response())
}

/// `DELETE /conversations/{id}` → 204; its messages go with it, from MySQL and the cache.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
    Path(conversation_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = ConversationRequest {
        user_id: caller.user_id,
        conversation_id,
    };
    ask(&state, request, true, async |mut client, request| {
        client.delete_conversation(request).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize)]
struct MessagesPage {
    messages: Vec<MessageBody>,
    next_cursor: Option<String>,
}

/// `GET /conversations/{id}/messages?limit=&cursor=` → oldest first.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    Reader {
        caller,
        limit,
        cursor,
    }: Reader,
    Path(conversation_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = ListConversationMessagesRequest {
        user_id: caller.user_id,
        conversation_id,
        limit,
        cursor,
    };
    let page = ask(&state, request, false, async |mut client, request| {
        client.list_conversation_messages(request).await
    })
    .await?;
    Ok(Json(MessagesPage {
        messages: page.messages.into_iter().map(Into::into).collect(),
        next_cursor: next_cursor(page.next_cursor),
    })
    .into_response())
}

/// `DELETE /history` → 204: every conversation and message of the caller, from MySQL
/// and the cache. The day's quota spending stays.
pub async fn erase(
    State(state): State<Arc<AppState>>,
    Reader { caller, .. }: Reader,
) -> Result<Response, ApiError> {
    let request = EraseUserRequest {
        user_id: caller.user_id,
    };
    ask(&state, request, true, async |mut client, request| {
        client.erase_user(request).await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
