//! The OpenAI-compatible API, so the official SDKs, LangChain, Open WebUI and other
//! tools work through the gateway with one of our API keys:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/chat/completions` | filter → reserve → llm → settle ‖ save, as `/chat` ([`exchange`]); whole or streamed ([`stream`]) |
//! | `GET /v1/models`, `GET /v1/models/{id}` | the models offered: `OPENAI_MODEL` and `ALLOWED_MODELS` |
//! | any other `/v1/...` | 404 in OpenAI's error shape, never the UI's page |
//!
//! Who is calling: `Authorization: Bearer <our key>` (or the UI's session), through the
//! same authenticator as `/chat`. With `AUTH_MODE=none` the key is not checked (SDKs
//! insist on sending one; any value does) and the acting user is the request's `user`
//! when it is a valid user id, else `anonymous`. With authentication on, `user` is only
//! passed to the provider as the end user, as OpenAI defines it.
//!
//! The rate limiter covers `/v1/chat/completions` as a model route (the router's
//! `rate_limit::enforce`, by matched path); streams take a place of the stream caps
//! (`admission`). Errors are OpenAI's shape ([`error`]); request fields are honoured or
//! refused by name ([`request`]). History: the user's last message and the reply (tool
//! calls as text) go to the conversation named by `X-Conversation-Id`, else by Open
//! WebUI's `X-OpenWebUI-Chat-Id`, else a new conversation per request; the unary answer
//! names it in `x-conversation-id`.

mod answer;
mod error;
mod exchange;
mod models;
mod request;
mod stream;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use chat_common::user::validate_user_id;
use chat_proto::{CompleteRequest, CompleteResponse};
use tonic::{Code, Status};
use tracing::Instrument;

use answer::{Head, completion_json};
use error::V1Error;
pub use error::openai_errors;
use exchange::{Exchange, Written};
use models::{Catalog, get_model, list_models};

use crate::auth::Caller;
use crate::routes::AppState;
use crate::{ApiError, Settings};

/// The acting user of a request without one in `AUTH_MODE=none`.
const ANONYMOUS: &str = "anonymous";
/// A client's conversation key, at most (`X-Conversation-Id`).
const MAX_CONVERSATION_KEY: usize = 128;
/// The `/v1` routes, to merge into the gateway's router.
pub fn routes(settings: &Settings) -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1", any(elsewhere))
        .route("/v1/{*rest}", any(elsewhere))
        .layer(Extension(Arc::new(Catalog::from_settings(settings))))
}

/// The caller: a key or a session; in `AUTH_MODE=none`, `None`.
async fn credentialed(state: &AppState, headers: &HeaderMap) -> Result<Option<Caller>, V1Error> {
    Ok(state.auth.caller(headers).await?)
}

/// A failed call to the llm service: a request the provider cannot take is the
/// client's 400; the rest keep the gateway's meaning (402, 429, 5xx).
fn llm_error(status: Status) -> V1Error {
    if status.code() == Code::InvalidArgument {
        return V1Error::invalid(None, status.message().to_owned());
    }
    V1Error::from(ApiError::from_llm(status))
}

/// `POST /v1/chat/completions`.
async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(catalog): Extension<Arc<Catalog>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(state, &catalog, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn complete(
    state: Arc<AppState>,
    catalog: &Catalog,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, V1Error> {
    // Authenticated before the body is read, as /chat: an anonymous caller learns
    // nothing from how their body is judged.
    let credentialed = credentialed(&state, headers).await?;
    let completion = request::parse(&read_body(&state, body)?)?;
    let caller = match credentialed {
        Some(caller) => caller,
        None => acting_user(completion.user.as_deref())?,
    };
    if !catalog.offers(&completion.model) {
        return Err(V1Error::model_not_found(&completion.model));
    }
    let max_tokens = completion
        .max_tokens
        .map_or(state.policy.max_output_tokens, |asked| {
            asked.min(state.policy.max_output_tokens)
        });
    let conversation_key = conversation_key(headers)?;
    let exchange = exchange::open(
        &state.backends,
        &state.policy,
        &caller,
        &completion,
        max_tokens,
        conversation_key,
    )
    .await?;
    let llm_request = exchange::llm_request(&caller, &completion, &completion.model, max_tokens);
    let head = Head::new(&completion.model);
    if completion.stream {
        let include_usage = completion.include_usage;
        return streamed(&state, &caller, exchange, llm_request, head, include_usage).await;
    }
    unary(&state, exchange, llm_request, &head).await
}

/// The body, within `MAX_BODY_BYTES`.
fn read_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, V1Error> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            V1Error::from(ApiError::PayloadTooLarge(state.max_body_bytes))
        }
        _ => V1Error::invalid(None, rejection.body_text()),
    })
}

/// `stream: true`: a place among the streams, then the chunks as server-sent events,
/// relayed from a task of the shutdown that runs the completion to its end.
async fn streamed(
    state: &AppState,
    caller: &Caller,
    exchange: Exchange,
    llm_request: CompleteRequest,
    head: Head,
    include_usage: bool,
) -> Result<Response, V1Error> {
    let permit = match state.admission.open_stream(&caller.user_id) {
        Ok(permit) => permit,
        Err(refused) => {
            exchange.abandon().await;
            return Err(refused.into());
        }
    };
    let events = state
        .stopping
        .open(|opened| {
            stream::run(
                state.backends.clone(),
                exchange,
                llm_request,
                head,
                include_usage,
                opened,
                state.stopping.clone(),
            )
        })
        .await
        .ok_or_else(|| task_failed("the completion task ended".to_owned()))??;
    Ok(crate::admission::sse_holding(permit, events, sse_event))
}

/// The whole answer at once, named by its conversation in `x-conversation-id`.
async fn unary(
    state: &AppState,
    exchange: Exchange,
    llm_request: CompleteRequest,
    head: &Head,
) -> Result<Response, V1Error> {
    // In a task of its own: a client that hangs up cannot cut the settlement short, and
    // a shutdown waits for it.
    let backends = state.backends.clone();
    let task = async move {
        let answer = match backends.complete(llm_request).await {
            Ok(answer) => answer,
            Err(status) => {
                exchange.abandon().await;
                return Err(llm_error(status));
            }
        };
        let written = written_of(&answer);
        let charge = answer.usage.map_or(
            crate::chat::Charge::Counted(0),
            crate::chat::Charge::Reported,
        );
        let closed = exchange.close(charge, &written, false).await;
        Ok((answer, closed.conversation_id))
    };
    let (answer, conversation_id) = state
        .stopping
        .spawn(task.in_current_span())
        .await
        .map_err(|error| task_failed(error.to_string()))??;
    let mut response = Json(completion_json(head, &answer)).into_response();
    if let Some(id) = conversation_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        response.headers_mut().insert("x-conversation-id", id);
    }
    Ok(response)
}

/// The task running a completion ended without its answer.
fn task_failed(message: String) -> V1Error {
    V1Error::from(ApiError::dependency("gateway", Status::internal(message)))
}

/// In `AUTH_MODE=none`: the request's `user`, else [`ANONYMOUS`].
fn acting_user(user: Option<&str>) -> Result<Caller, V1Error> {
    let user_id = user.unwrap_or(ANONYMOUS);
    validate_user_id(user_id)
        .map_err(|error| V1Error::from(ApiError::InvalidUserId(error.to_string())))?;
    Ok(Caller {
        user_id: user_id.to_owned(),
        daily_limit: None,
        rate_limit_per_minute: None,
    })
}

/// The conversation a client names: `X-Conversation-Id`, else Open WebUI's chat id;
/// empty (a new conversation) when neither is sent.
fn conversation_key(headers: &HeaderMap) -> Result<String, V1Error> {
    let named = ["x-conversation-id", "x-openwebui-chat-id"]
        .into_iter()
        .find_map(|name| headers.get(name))
        .map(|value| value.to_str().map(str::trim));
    match named {
        None => Ok(String::new()),
        Some(Ok(key)) if key.chars().count() <= MAX_CONVERSATION_KEY => Ok(key.to_owned()),
        Some(_) => Err(V1Error::invalid(
            None,
            format!(
                "X-Conversation-Id must be visible ASCII of at most {MAX_CONVERSATION_KEY} characters"
            ),
        )),
    }
}

fn written_of(answer: &CompleteResponse) -> Written {
    Written {
        text: answer.reply.clone(),
        tool_calls: answer
            .tool_calls
            .iter()
            .map(|call| (call.name.clone(), call.arguments.clone()))
            .collect(),
    }
}

fn sse_event(event: stream::Event) -> SseEvent {
    let data = match event {
        stream::Event::Chunk(chunk) => chunk.to_string(),
        stream::Event::Done => "[DONE]".to_owned(),
        stream::Event::Failed(error) => {
            tracing::warn!(code = ?error.code, message = %error.message, "stream failed after it began");
            error.body().to_string()
        }
    };
    SseEvent::default().data(data)
}

/// Any other `/v1` path. A base URL with a trailing slash makes clients ask for
/// `/v1//models`: doubled slashes are forgiven (a model list is served, a completion
/// is redirected to its one route, where the model rate limit applies); anything else
/// is OpenAI's 404, never the UI's page.
async fn elsewhere(
    State(state): State<Arc<AppState>>,
    Extension(catalog): Extension<Arc<Catalog>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, V1Error> {
    let mut path = uri.path().to_owned();
    while path.contains("//") {
        path = path.replace("//", "/");
    }
    let path = path.trim_end_matches('/');
    if path == uri.path() {
        return Err(V1Error::unknown_url(method.as_str(), uri.path()));
    }
    match (&method, path) {
        (&Method::GET, "/v1/models") => {
            list_models(State(state), Extension(catalog), headers).await
        }
        (&Method::GET, _) if path.starts_with("/v1/models/") => {
            let id = path.trim_start_matches("/v1/models/").to_owned();
            get_model(State(state), Extension(catalog), headers, Path(id)).await
        }
        (&Method::POST, "/v1/chat/completions") => {
            let target = match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            Ok(Redirect::permanent(&target).into_response())
        }
        _ => Err(V1Error::unknown_url(method.as_str(), uri.path())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conversation_key_is_ours_then_open_webuis() {
        let mut headers = HeaderMap::new();
        assert_eq!(conversation_key(&headers).ok().as_deref(), Some(""));
        headers.insert("x-openwebui-chat-id", HeaderValue::from_static("webui-1"));
        assert_eq!(conversation_key(&headers).ok().as_deref(), Some("webui-1"));
        headers.insert("x-conversation-id", HeaderValue::from_static("mine"));
        assert_eq!(conversation_key(&headers).ok().as_deref(), Some("mine"));
        let long = "k".repeat(MAX_CONVERSATION_KEY + 1);
        headers.insert(
            "x-conversation-id",
            HeaderValue::from_str(&long).unwrap_or(HeaderValue::from_static("")),
        );
        assert!(conversation_key(&headers).is_err());
    }
}
