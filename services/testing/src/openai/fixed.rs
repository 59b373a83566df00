//! The fixed fake, for the benchmark: every answer is the same, prepared once, so the
//! fake adds no latency of its own (no tokenizer, no lock, no log of requests). It marks
//! when it sends the first and the last content chunk of a stream.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::Value;

use super::wire;

/// The one answer a fixed fake gives, whatever it is asked.
#[derive(Debug, Clone)]
pub struct FixedReply {
    pub model: String,
    /// Streamed word by word.
    pub text: String,
    /// Usage it reports: fixed, since counting would cost the fake time per request.
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// When the latest stream's first and last content chunks left. Meaningful when one
/// stream runs at a time.
pub struct Marks {
    epoch: Instant,
    /// Nanoseconds since `epoch`.
    first_chunk: AtomicU64,
    last_chunk: AtomicU64,
}

impl Marks {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            first_chunk: AtomicU64::new(0),
            last_chunk: AtomicU64::new(0),
        }
    }

    fn mark(&self, slot: &AtomicU64) {
        slot.store(self.epoch.elapsed().as_nanos() as u64, Ordering::SeqCst);
    }

    /// (first chunk, last chunk) of the latest stream, as instants.
    pub fn last_stream(&self) -> (Instant, Instant) {
        let at = |slot: &AtomicU64| self.epoch + Duration::from_nanos(slot.load(Ordering::SeqCst));
        (at(&self.first_chunk), at(&self.last_chunk))
    }
}

/// The answers, serialized once.
pub(super) struct Prepared {
    whole: Bytes,
    events: Vec<Bytes>,
    /// Indexes of the content chunks in `events`.
    content: RangeInclusive<usize>,
    marks: Arc<Marks>,
}

impl Prepared {
    pub(super) fn new(reply: &FixedReply, marks: Arc<Marks>) -> Self {
        const ID: &str = "chatcmpl-bench";
        let usage = wire::usage(reply.prompt_tokens, reply.completion_tokens);
        let whole = wire::completion(ID, &reply.model, &reply.text, &usage);
        let events = wire::stream_events(ID, &reply.model, &reply.text, Some(&usage));
        Self {
            whole: Bytes::from(whole.to_string()),
            events: events.into_iter().map(Bytes::from).collect(),
            content: 1..=wire::words(&reply.text).count(),
            marks,
        }
    }
}

pub(super) async fn chat_completions(
    State(prepared): State<Arc<Prepared>>,
    body: Bytes,
) -> Response {
    // Only the one field that changes the answer is looked at, as a real server would.
    let streamed = serde_json::from_slice::<Value>(&body).is_ok_and(|body| body["stream"] == true);
    if !streamed {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            prepared.whole.clone(),
        )
            .into_response();
    }
    let stream = futures::stream::iter(0..prepared.events.len()).map(move |index| {
        if index == *prepared.content.start() {
            prepared.marks.mark(&prepared.marks.first_chunk);
        }
        if index == *prepared.content.end() {
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
