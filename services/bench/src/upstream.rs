//! The provider the benchmark measures against: OpenAI's Chat Completions wire format,
//! streamed and not, with zero added latency and a fixed reply. It marks when it sends
//! the first and the last chunk of a stream, on the benchmark's own clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Value, json};

pub const MODEL: &str = "bench-model";
const REPLY_WORDS: &[&str] = &[
    "Benchmarks ",
    "measure ",
    "what ",
    "the ",
    "gateway ",
    "adds ",
    "on ",
    "top ",
    "of ",
    "the ",
    "provider, ",
    "nothing ",
    "more.",
];
const PROMPT_TOKENS: u64 = 24;
const COMPLETION_TOKENS: u64 = 13;

/// When the last stream's first and last content chunks left, in nanoseconds since
/// `epoch`. Meaningful when one stream runs at a time.
pub struct Marks {
    pub epoch: Instant,
    first_chunk: AtomicU64,
    last_chunk: AtomicU64,
}

impl Marks {
    fn mark(&self, slot: &AtomicU64) {
        slot.store(self.epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }

    /// (first chunk, last chunk) of the latest stream, as instants.
    pub fn last_stream(&self) -> (Instant, Instant) {
        let at = |slot: &AtomicU64| {
            self.epoch + std::time::Duration::from_nanos(slot.load(Ordering::SeqCst))
        };
        (at(&self.first_chunk), at(&self.last_chunk))
    }
}

struct Prepared {
    whole: Bytes,
    /// Role chunk, content chunks, finish chunk, usage chunk, `[DONE]`.
    events: Vec<Bytes>,
    marks: Arc<Marks>,
}

pub struct Upstream {
    pub base_url: String,
    pub marks: Arc<Marks>,
}

pub async fn start(epoch: Instant) -> anyhow::Result<Upstream> {
    let usage = json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS
    });
    let reply: String = REPLY_WORDS.concat();
    let whole = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
        "usage": usage
    });
    let chunk = |delta: Value, finish: Value, usage: Value| {
        let choices = if usage.is_null() {
            json!([{"index": 0, "delta": delta, "finish_reason": finish}])
        } else {
            json!([])
        };
        Bytes::from(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
                   "model": MODEL, "choices": choices, "usage": usage})
        ))
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        Value::Null,
    )];
    events.extend(
        REPLY_WORDS
            .iter()
            .map(|word| chunk(json!({"content": word}), Value::Null, Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop"), Value::Null));
    events.push(chunk(Value::Null, Value::Null, usage));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let marks = Arc::new(Marks {
        epoch,
        first_chunk: AtomicU64::new(0),
        last_chunk: AtomicU64::new(0),
    });
    let prepared = Arc::new(Prepared {
        whole: Bytes::from(whole.to_string()),
        events,
        marks: marks.clone(),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .with_state(prepared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}/v1", listener.local_addr()?);
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Upstream { base_url, marks })
}

async fn completions(State(prepared): State<Arc<Prepared>>, body: Bytes) -> Response {
    // Only the one field that changes the answer is looked at, as a real server would.
    let streamed = serde_json::from_slice::<Value>(&body).is_ok_and(|body| body["stream"] == true);
    if !streamed {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            prepared.whole.clone(),
        )
            .into_response();
    }
    let last_content = REPLY_WORDS.len(); // events[1..=len] are the content chunks
    let stream = futures::stream::iter(0..prepared.events.len()).map(move |index| {
        if index == 1 {
            prepared.marks.mark(&prepared.marks.first_chunk);
        }
        if index == last_content {
            prepared.marks.mark(&prepared.marks.last_chunk);
        }
        Ok::<_, std::convert::Infallible>(prepared.events[index].clone())
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}
