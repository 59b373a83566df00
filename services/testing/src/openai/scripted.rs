//! The scripted fake: each request does what the test queued for it, and what the
//! provider was asked is kept for assertions.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_common::tokens;
use serde_json::{Value, json};

use super::stream::StreamPlan;
use super::wire;

/// What the fake provider does with one request.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// 200 with `echo: <last user message>`; usage counted with the real tokenizer.
    /// A request that offers `tools` (and no `tool_choice` of `none`) and ends with the
    /// user's message gets a call of its first tool instead, with the arguments
    /// `{"echo": "<last user message>"}`.
    Echo,
    /// 200 with a call of this tool (`finish_reason: tool_calls`), streamed as OpenAI
    /// does: the name first, then the arguments in pieces.
    ToolCall { name: String, arguments: String },
    /// 400 `invalid_request_error` with this message, as OpenAI refuses a bad parameter.
    BadRequest(String),
    /// 200 with this reply text.
    Reply(String),
    /// 429 `rate_limit_exceeded`.
    RateLimited,
    /// 429 `insufficient_quota`: the account has no credit.
    InsufficientQuota,
    /// 500 with a non-JSON body, as OpenAI's servers sometimes send.
    ServerError,
    /// Waits this long, then echoes.
    Slow(Duration),
    /// This reply, streamed with a pause before every chunk after the role chunk (so
    /// before the first word too).
    Streamed { text: String, chunk_delay: Duration },
    /// Streams this reply but cuts the connection after `after_chunks` content chunks.
    BrokenStream { text: String, after_chunks: usize },
    /// As [`Upstream::Echo`], streamed with this pause before every chunk after the role
    /// chunk; a whole answer waits as long as its stream would. Keeps chats in flight
    /// for the fault suite, each reply telling which request it answers.
    PacedEcho(Duration),
}

#[derive(Default)]
pub(super) struct Script {
    /// Behaviours for the next requests, in order; `fallback` once it is empty.
    pub(super) queue: Mutex<VecDeque<Upstream>>,
    pub(super) fallback: Mutex<Option<Upstream>>,
    /// Every request body received, for assertions on what the provider saw.
    pub(super) requests: Mutex<Vec<Value>>,
    /// Streams whose client went away before the end.
    pub(super) cancelled_streams: AtomicUsize,
    /// Reported prompt tokens per token of ours, as a provider whose tokenizer counts
    /// more (or fewer); unset: our count.
    pub(super) prompt_factor: Mutex<Option<f64>>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A successful answer, before it is written.
#[derive(Default)]
struct Answer {
    /// `None`: echo the last user message.
    reply: Option<String>,
    /// A tool call (name, arguments) instead of text.
    tool_call: Option<(String, String)>,
    pace: Duration,
    /// A whole (not streamed) answer waits as long as its paced stream would.
    whole_waits: bool,
    break_after: Option<usize>,
}

pub(super) async fn chat_completions(
    State(script): State<Arc<Script>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer ") && value.len() > 7);
    if !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing api key",
            "invalid_request_error",
            "invalid_api_key",
        );
    }
    lock(&script.requests).push(body.clone());
    let behaviour = lock(&script.queue)
        .pop_front()
        .or_else(|| lock(&script.fallback).clone())
        .unwrap_or(Upstream::Echo);
    match play(behaviour).await {
        Ok(answer) => respond(script, &body, answer).await,
        Err(refusal) => refusal,
    }
}

/// What a behaviour answers: the shape of a successful answer, or the error response.
async fn play(behaviour: Upstream) -> Result<Answer, Response> {
    match behaviour {
        Upstream::Echo => Ok(Answer::default()),
        Upstream::ToolCall { name, arguments } => Ok(Answer {
            tool_call: Some((name, arguments)),
            ..Answer::default()
        }),
        Upstream::BadRequest(message) => Err(error(
            StatusCode::BAD_REQUEST,
            &message,
            "invalid_request_error",
            "invalid_value",
        )),
        Upstream::Reply(text) => Ok(Answer {
            reply: Some(text),
            ..Answer::default()
        }),
        Upstream::Slow(delay) => {
            tokio::time::sleep(delay).await;
            Ok(Answer::default())
        }
        Upstream::Streamed { text, chunk_delay } => Ok(Answer {
            reply: Some(text),
            pace: chunk_delay,
            ..Answer::default()
        }),
        Upstream::PacedEcho(pace) => Ok(Answer {
            pace,
            whole_waits: true,
            ..Answer::default()
        }),
        Upstream::BrokenStream { text, after_chunks } => Ok(Answer {
            reply: Some(text),
            break_after: Some(after_chunks),
            ..Answer::default()
        }),
        Upstream::RateLimited => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests",
            "requests",
            "rate_limit_exceeded",
        )),
        Upstream::InsufficientQuota => Err(error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        )),
        Upstream::ServerError => {
            Err((StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response())
        }
    }
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

/// The answer as JSON or as a stream, as the request asked, with the usage counted
/// by the real tokenizer.
async fn respond(script: Arc<Script>, body: &Value, mut answer: Answer) -> Response {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|message| message["role"] == "user")
        .map(content)
        .unwrap_or_default();
    if answer.reply.is_none() && answer.tool_call.is_none() && offers_tools(body, &messages) {
        let name = body["tools"][0]["function"]["name"]
            .as_str()
            .unwrap_or("tool");
        let arguments = json!({"echo": last_user}).to_string();
        answer.tool_call = Some((name.to_owned(), arguments));
    }
    let reply = answer
        .reply
        .take()
        .unwrap_or_else(|| format!("echo: {last_user}"));
    let written = match &answer.tool_call {
        Some((name, arguments)) => tokens::count(name) + tokens::count(arguments),
        None => tokens::count(&reply),
    };
    let shape = Shape {
        model: body["model"].as_str().unwrap_or("fake-model"),
        streamed: body["stream"] == true,
        include_usage: body["stream_options"]["include_usage"] == true,
        usage: wire::usage(prompt_tokens(&script, &messages), written),
    };
    match answer.tool_call.take() {
        Some((name, arguments)) => {
            tool_call_response(script, &shape, &name, &arguments, answer.pace)
        }
        None => text_response(script, &shape, &reply, &answer).await,
    }
}

/// What the request asked the answer to look like.
struct Shape<'a> {
    model: &'a str,
    streamed: bool,
    /// A streamed answer ends with a chunk of usage.
    include_usage: bool,
    usage: Value,
}

impl Shape<'_> {
    /// The usage for the stream's last chunk, if it asked for one.
    fn stream_usage(&self) -> Option<&Value> {
        self.include_usage.then_some(&self.usage)
    }
}

fn content(message: &Value) -> String {
    message["content"].as_str().unwrap_or_default().to_owned()
}

/// Whether the request offers tools and leaves the model free to call one, in answer
/// to a user's message.
fn offers_tools(body: &Value, messages: &[Value]) -> bool {
    body["tools"]
        .as_array()
        .is_some_and(|tools| !tools.is_empty())
        && body["tool_choice"] != "none"
        && messages.last().is_some_and(|last| last["role"] == "user")
}

/// The prompt's tokens as the provider counts them, scaled if the script says so.
fn prompt_tokens(script: &Script, messages: &[Value]) -> usize {
    let contents: Vec<String> = messages.iter().map(content).collect();
    let counted = tokens::count_prompt(contents.iter().map(String::as_str));
    match *lock(&script.prompt_factor) {
        Some(factor) => (counted as f64 * factor).ceil() as usize,
        None => counted,
    }
}

/// A call of the tool `name`, whole or streamed.
fn tool_call_response(
    script: Arc<Script>,
    shape: &Shape<'_>,
    name: &str,
    arguments: &str,
    pace: Duration,
) -> Response {
    if !shape.streamed {
        let whole = wire::tool_call_completion(ID, shape.model, name, arguments, &shape.usage);
        return Json(whole).into_response();
    }
    let events =
        wire::tool_call_stream_events(ID, shape.model, name, arguments, shape.stream_usage());
    let plan = StreamPlan {
        events,
        pace,
        cut_at: None,
    };
    event_stream(plan, script)
}

/// `reply`, whole (after as long as its stream would take, if `answer` says so) or
/// streamed at `answer`'s pace, perhaps cut.
async fn text_response(
    script: Arc<Script>,
    shape: &Shape<'_>,
    reply: &str,
    answer: &Answer,
) -> Response {
    if !shape.streamed {
        if answer.whole_waits {
            let chunks = wire::stream_events(ID, shape.model, reply, None).len();
            let chunks = u32::try_from(chunks.saturating_sub(1)).unwrap_or(u32::MAX);
            tokio::time::sleep(answer.pace.saturating_mul(chunks)).await;
        }
        return Json(wire::completion(ID, shape.model, reply, &shape.usage)).into_response();
    }
    let plan = StreamPlan {
        events: wire::stream_events(ID, shape.model, reply, shape.stream_usage()),
        pace: answer.pace,
        cut_at: answer.break_after.map(|chunks| chunks + 1),
    };
    event_stream(plan, script)
}

/// The planned events as a `text/event-stream` response.
fn event_stream(plan: StreamPlan, script: Arc<Script>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(plan.into_stream(script)),
    )
        .into_response()
}

const ID: &str = "chatcmpl-fake";
