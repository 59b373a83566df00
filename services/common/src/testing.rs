//! Test support: real Redis and MySQL, isolated per test, and a real HTTP server that
//! speaks OpenAI's Chat Completions wire format.
//!
//! Where the servers are comes from `TEST_REDIS_ADDR` (default `redis://127.0.0.1:6379`)
//! and `TEST_MYSQL_URL` (default `mysql://chat:chat@127.0.0.1:3306`, a user allowed to
//! create databases). `deploy/dev/deps.sh up` starts both natively.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

use crate::tokens;

pub fn redis_addr() -> String {
    std::env::var("TEST_REDIS_ADDR").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn mysql_server_url() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://chat:chat@127.0.0.1:3306".to_owned())
}

/// Runs an async clean-up from `Drop`, on a thread of its own so it works whether or
/// not the test's runtime is still alive.
fn clean_up_in_background<F, Fut>(work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
    .join();
    if let Ok(Err(error)) = joined {
        tracing::warn!(%error, "test clean-up failed");
    }
}

/// A key prefix no other test uses; its keys are deleted when it is dropped.
pub struct TestRedis {
    pub addr: String,
    pub prefix: String,
}

impl TestRedis {
    pub async fn new() -> anyhow::Result<Self> {
        let addr = redis_addr();
        let pool = crate::redis::pool(&addr, 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the test Redis at {addr} ({error}); run `deploy/dev/deps.sh up`"
            )
        })?;
        let _: String = deadpool_redis::redis::cmd("PING")
            .query_async(&mut connection)
            .await?;
        Ok(Self {
            addr,
            prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        })
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let addr = self.addr.clone();
        let pattern = format!("{}*", self.prefix);
        clean_up_in_background(move || async move {
            let pool = crate::redis::pool(&addr, 1, Duration::from_secs(2))?;
            let mut connection = pool.get().await?;
            let keys: Vec<String> = deadpool_redis::redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let _: i64 = deadpool_redis::redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await?;
            }
            Ok(())
        });
    }
}

/// A database of its own on the test MySQL server, dropped with this value.
pub struct TestDatabase {
    /// `mysql://...` URL of the new database, for `MYSQL_DSN`.
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub async fn new() -> anyhow::Result<Self> {
        let server = mysql_server_url();
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&server)?);
        let mut connection = pool.get_conn().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the test MySQL server ({error}); run `deploy/dev/deps.sh up`"
            )
        })?;
        connection
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .await?;
        drop(connection);
        pool.disconnect().await?;
        Ok(Self {
            url: format!("{}/{name}", server.trim_end_matches('/')),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        clean_up_in_background(move || async move {
            let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&mysql_server_url())?);
            let mut connection = pool.get_conn().await?;
            connection
                .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await?;
            drop(connection);
            pool.disconnect().await?;
            Ok(())
        });
    }
}

/// What the fake provider does with one request.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// 200 with `echo: <last user message>`; usage counted with the real tokenizer.
    Echo,
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
}

#[derive(Default)]
struct FakeState {
    /// Behaviours for the next requests, in order; `fallback` once it is empty.
    script: Mutex<VecDeque<Upstream>>,
    fallback: Mutex<Option<Upstream>>,
    /// Every request body received, for assertions on what the provider saw.
    requests: Mutex<Vec<Value>>,
    /// Streams whose client went away before the end.
    cancelled_streams: AtomicUsize,
}

/// A real HTTP server on 127.0.0.1 speaking OpenAI's Chat Completions API.
pub struct FakeOpenAi {
    /// Base URL for `OPENAI_BASE_URL`, ending in `/v1`.
    pub base_url: String,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(FakeState::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "fake openai server failed");
            }
        });
        Ok(Self {
            base_url,
            state,
            server,
        })
    }

    /// Queues behaviours for the next requests.
    pub fn then(&self, behaviours: impl IntoIterator<Item = Upstream>) {
        lock(&self.state.script).extend(behaviours);
    }

    /// What every request does once the queue is empty (default: [`Upstream::Echo`]).
    pub fn always(&self, behaviour: Upstream) {
        *lock(&self.state.fallback) = Some(behaviour);
    }

    /// The JSON bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state.requests).clone()
    }

    /// How many streamed answers the client abandoned before their end.
    pub fn cancelled_streams(&self) -> usize {
        self.state.cancelled_streams.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

async fn chat_completions(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer ") && value.len() > 7);
    if !authorized {
        let body = error_body(
            "missing api key",
            "invalid_request_error",
            "invalid_api_key",
        );
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    lock(&state.requests).push(body.clone());
    let behaviour = lock(&state.script)
        .pop_front()
        .or_else(|| lock(&state.fallback).clone())
        .unwrap_or(Upstream::Echo);
    let mut pace = Duration::ZERO;
    let mut break_after = None;
    let reply = match behaviour {
        Upstream::Echo => None,
        Upstream::Reply(text) => Some(text),
        Upstream::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Upstream::Streamed { text, chunk_delay } => {
            pace = chunk_delay;
            Some(text)
        }
        Upstream::BrokenStream { text, after_chunks } => {
            break_after = Some(after_chunks);
            Some(text)
        }
        Upstream::RateLimited => {
            let body = error_body(
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            );
            return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        }
        Upstream::InsufficientQuota => {
            let body = error_body(
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            );
            return (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        }
        Upstream::ServerError => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response();
        }
    };
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let contents: Vec<&str> = messages
        .iter()
        .map(|message| message["content"].as_str().unwrap_or_default())
        .collect();
    let reply = reply.unwrap_or_else(|| {
        let last_user = messages
            .iter()
            .rev()
            .find(|message| message["role"] == "user")
            .and_then(|message| message["content"].as_str())
            .unwrap_or_default();
        format!("echo: {last_user}")
    });
    let prompt_tokens = tokens::count_prompt(contents.iter().copied());
    let completion_tokens = tokens::count(&reply);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    });
    let model = body["model"].as_str().unwrap_or("fake-model").to_owned();
    if body["stream"] == true {
        let include_usage = body["stream_options"]["include_usage"] == true;
        let stream = StreamPlan::new(
            &reply,
            &model,
            include_usage.then_some(usage),
            pace,
            break_after,
        );
        return (
            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
            axum::body::Body::from_stream(stream.into_stream(state)),
        )
            .into_response();
    }
    let body = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": body["model"].as_str().unwrap_or("fake-model"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": "stop"
        }],
        "usage": usage
    });
    Json(body).into_response()
}

/// The server-sent events of one streamed answer, as OpenAI sends them: a role chunk,
/// one chunk per word, a finish chunk, the usage chunk when asked for, `[DONE]`.
struct StreamPlan {
    events: Vec<String>,
    pace: Duration,
    /// Index of the event before which the connection is cut, if it is.
    cut_at: Option<usize>,
}

impl StreamPlan {
    fn new(
        reply: &str,
        model: &str,
        usage: Option<Value>,
        pace: Duration,
        break_after: Option<usize>,
    ) -> Self {
        let chunk = |delta: Value, finish: Value| {
            json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            })
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        events.extend(
            reply
                .split_inclusive(' ')
                .map(|word| chunk(json!({"content": word}), Value::Null)),
        );
        events.push(chunk(json!({}), json!("stop")));
        if let Some(usage) = usage {
            events.push(json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": usage
            }));
        }
        let mut events: Vec<String> = events
            .iter()
            .map(|event| format!("data: {event}\n\n"))
            .collect();
        events.push("data: [DONE]\n\n".to_owned());
        Self {
            events,
            pace,
            cut_at: break_after.map(|chunks| chunks + 1),
        }
    }

    fn into_stream(
        self,
        state: Arc<FakeState>,
    ) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send {
        let guard = CancelGuard {
            state,
            finished: false,
        };
        futures::stream::unfold(
            (self, 0usize, guard),
            |(plan, index, mut guard)| async move {
                if plan.cut_at == Some(index) {
                    // Let what was sent reach the client first, as on a real network.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    guard.finished = true; // a deliberate cut, not a cancellation
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                    return Some((Err(cut), (plan, usize::MAX, guard)));
                }
                let event = plan.events.get(index)?.clone();
                if index > 0 && !plan.pace.is_zero() {
                    tokio::time::sleep(plan.pace).await;
                }
                if index + 1 == plan.events.len() {
                    guard.finished = true;
                }
                Some((Ok(event), (plan, index + 1, guard)))
            },
        )
    }
}

/// Counts a stream dropped before its last event: the client cancelled it.
struct CancelGuard {
    state: Arc<FakeState>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.state.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}
