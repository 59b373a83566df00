//! `stream: true`: OpenAI's chunk stream, run in a task of its own so that a client
//! that hangs up cannot cut the settlement short.
//!
//! Unlike `/chat/stream`, a client leaving does not cancel the model's call: the task
//! reads the stream to its end and settles to the usage the provider reports, so the
//! charge is exactly what the provider bills (the reply is saved, marked incomplete,
//! since the client did not get all of it). SDKs close streams early routinely; an
//! estimate there would make every such charge approximate. The cost is bounded by the
//! output cap, which the reservation already holds.

use std::time::Duration;

use chat_common::shutdown::Shutdown;
use chat_common::tokens;
use chat_proto::{CompleteChunk, CompleteRequest, Usage};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::answer::{Head, usage_json};
use super::error::V1Error;
use super::exchange::{Exchange, Written};
use super::llm_error;
use crate::Backends;
use crate::chat::Charge;
use crate::metrics::{self, StreamOutcome};

/// One server-sent event of the stream.
#[derive(Debug)]
pub enum Event {
    /// `data: <chunk>`.
    Chunk(Value),
    /// `data: [DONE]`, the last event of a stream that completed.
    Done,
    /// `data: {"error": ...}`, the last event of a stream that broke after it began.
    Failed(V1Error),
}

/// What the stream answers first: its events, or the error that ended it before the
/// first chunk (which keeps its HTTP status).
pub type Opening = Result<mpsc::Receiver<Event>, V1Error>;

/// Events waiting for a slow client before the relay waits for it.
const EVENT_BUFFER: usize = 64;

/// Runs the completion to its end whatever the client does.
pub async fn run(
    backends: Backends,
    exchange: Exchange,
    request: CompleteRequest,
    head: Head,
    include_usage: bool,
    opened: oneshot::Sender<Opening>,
    stopping: Shutdown,
) {
    let patience = backends.llm_deadline();
    // The first chunk decides the status: an error before it is an ordinary error.
    let (mut chunks, first) = match begin(&backends, request, patience).await {
        Ok(begun) => begun,
        Err(status) => {
            exchange.abandon().await;
            let _ = opened.send(Err(llm_error(status)));
            return;
        }
    };
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let mut relay = Relay {
        client: opened.send(Ok(receiver)).is_ok().then_some(events),
        head,
        written: Written::default(),
        finished: false,
    };
    let role = relay
        .head
        .chunk(json!({"role": "assistant", "content": ""}), None);
    send(&mut relay.client, Event::Chunk(role)).await;
    match relay
        .until_usage(first, &mut chunks, patience, &stopping)
        .await
    {
        Ok((usage, model)) => relay.finish(exchange, usage, &model, include_usage).await,
        Err(status) => relay.broken(exchange, status).await,
    }
}

/// Opens the llm stream and reads its first chunk.
async fn begin(
    backends: &Backends,
    request: CompleteRequest,
    patience: Duration,
) -> Result<(Streaming<CompleteChunk>, CompleteChunk), Status> {
    let mut chunks = backends.complete_stream(request).await?;
    let first = next_chunk(&mut chunks, patience).await?;
    Ok((chunks, first))
}

/// One stream under way: where its events go and what was written so far.
struct Relay {
    /// The client's events; `None` once it has gone.
    client: Option<mpsc::Sender<Event>>,
    head: Head,
    /// The reply so far, to save and, without usage, to count.
    written: Written,
    /// Whether the provider said why it stopped (a `finish_reason` was relayed).
    finished: bool,
}

impl Relay {
    /// Relays chunks, `first` first, until the one that carries the usage (the
    /// stream's end) or an error.
    async fn until_usage(
        &mut self,
        first: CompleteChunk,
        chunks: &mut Streaming<CompleteChunk>,
        patience: Duration,
        stopping: &Shutdown,
    ) -> Result<(Usage, String), Status> {
        let mut chunk = first;
        loop {
            for event in events_of(&self.head, &chunk, &mut self.written, &mut self.finished) {
                send(&mut self.client, Event::Chunk(event)).await;
            }
            if let Some(usage) = chunk.usage {
                return Ok((usage, chunk.model));
            }
            chunk = tokio::select! {
                chunk = next_chunk(chunks, patience) => chunk,
                // The gateway's grace is nearly over: end here, charged and saved.
                () = stopping.interrupted() => Err(Status::unavailable(
                    "the gateway is shutting down; the reply was cut short",
                )),
            }?;
        }
    }

    /// The stream ended with its usage: charged what the provider reports, then the
    /// last chunks and `[DONE]`.
    async fn finish(mut self, exchange: Exchange, usage: Usage, model: &str, include_usage: bool) {
        let incomplete = self.client.is_none();
        if !self.finished {
            // A provider that never said why it stopped.
            let reason = if self.written.tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            };
            let last = self.head.chunk(json!({}), Some(reason));
            send(&mut self.client, Event::Chunk(last)).await;
        }
        metrics::stream_ended(if incomplete {
            StreamOutcome::ClientGone
        } else {
            StreamOutcome::Finished
        });
        exchange
            .close(Charge::Reported(usage), &self.written, incomplete)
            .await;
        if include_usage {
            let mut last = self.head.with_model(model).envelope(json!([]));
            last["usage"] = usage_json(&usage);
            send(&mut self.client, Event::Chunk(last)).await;
        }
        send(&mut self.client, Event::Done).await;
    }

    /// The stream broke after it began: no usage came, so what was generated is
    /// charged, counted with our tokenizer, and the client gets the error.
    async fn broken(mut self, exchange: Exchange, status: Status) {
        let arguments = self
            .written
            .tool_calls
            .iter()
            .map(|(_, arguments)| arguments.as_str());
        let generated: usize = std::iter::once(self.written.text.as_str())
            .chain(arguments)
            .map(tokens::count)
            .sum();
        let used = exchange.prompt_tokens + generated as i64;
        metrics::stream_ended(StreamOutcome::Broken);
        tracing::warn!(code = ?status.code(), message = %status.message(), "llm stream broke; partial reply saved");
        exchange
            .close(Charge::Counted(used), &self.written, true)
            .await;
        send(&mut self.client, Event::Failed(llm_error(status))).await;
    }
}

/// Sends to the client while it is there; once it has gone, nothing more is sent.
async fn send(client: &mut Option<mpsc::Sender<Event>>, event: Event) {
    if let Some(events) = client
        && events.send(event).await.is_err()
    {
        tracing::info!("client left mid-stream; reading the completion to its end to settle it");
        *client = None;
    }
}

/// OpenAI's chunks for one chunk of the llm service, and what it adds to the reply.
fn events_of(
    head: &Head,
    chunk: &CompleteChunk,
    written: &mut Written,
    finished: &mut bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    if !chunk.delta.is_empty() {
        written.text.push_str(&chunk.delta);
        out.push(head.chunk(json!({"content": chunk.delta}), None));
    }
    if !chunk.tool_calls.is_empty() {
        let calls: Vec<Value> = chunk
            .tool_calls
            .iter()
            .map(|call| {
                let index = call.index as usize;
                if written.tool_calls.len() <= index {
                    written.tool_calls.resize(index + 1, Default::default());
                }
                written.tool_calls[index].0.push_str(&call.name);
                written.tool_calls[index].1.push_str(&call.arguments);
                let mut function = json!({"arguments": call.arguments});
                let mut delta = json!({"index": call.index});
                if !call.id.is_empty() {
                    delta["id"] = call.id.clone().into();
                    delta["type"] = "function".into();
                }
                if !call.name.is_empty() {
                    function["name"] = call.name.clone().into();
                }
                delta["function"] = function;
                delta
            })
            .collect();
        out.push(head.chunk(json!({"tool_calls": calls}), None));
    }
    if !chunk.finish_reason.is_empty() {
        *finished = true;
        out.push(head.chunk(json!({}), Some(&chunk.finish_reason)));
    }
    out
}

/// The next chunk within `patience`; the end of the stream before the usage, a
/// silence and an error all end it.
async fn next_chunk(
    chunks: &mut Streaming<CompleteChunk>,
    patience: Duration,
) -> Result<CompleteChunk, Status> {
    match tokio::time::timeout(patience, chunks.message()).await {
        Ok(Ok(Some(chunk))) => Ok(chunk),
        Ok(Ok(None)) => Err(Status::internal("the llm stream ended without its usage")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded("the llm stream went silent")),
    }
}

#[cfg(test)]
mod tests {
    use chat_proto::ToolCallDelta;

    use super::*;

    #[test]
    fn llm_chunks_become_openai_chunks() {
        let head = Head::new("gpt-test");
        let mut written = Written::default();
        let mut finished = false;
        let first = CompleteChunk {
            tool_calls: vec![ToolCallDelta {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
                arguments: String::new(),
            }],
            ..CompleteChunk::default()
        };
        let events = events_of(&head, &first, &mut written, &mut finished);
        let call = &events[0]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "f");
        let more = CompleteChunk {
            tool_calls: vec![ToolCallDelta {
                index: 0,
                arguments: "{\"a\":1}".into(),
                ..ToolCallDelta::default()
            }],
            finish_reason: "tool_calls".into(),
            ..CompleteChunk::default()
        };
        let events = events_of(&head, &more, &mut written, &mut finished);
        let call = &events[0]["choices"][0]["delta"]["tool_calls"][0];
        assert!(call.get("id").is_none() && call["function"].get("name").is_none());
        assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(events[1]["object"], "chat.completion.chunk");
        assert!(finished);
        assert_eq!(
            written.tool_calls,
            [("f".to_owned(), "{\"a\":1}".to_owned())]
        );

        let text = CompleteChunk {
            delta: "hi".into(),
            ..CompleteChunk::default()
        };
        let events = events_of(&head, &text, &mut written, &mut finished);
        assert_eq!(events[0]["choices"][0]["delta"]["content"], "hi");
        assert_eq!(events[0]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(events[0]["model"], "gpt-test");
    }
}
