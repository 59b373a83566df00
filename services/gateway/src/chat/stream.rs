//! `POST /chat/stream`: the same path as `/chat`, the reply relayed as it is generated,
//! in three steps: [`open`] the model's stream and wait for its first text (an error
//! before it keeps its HTTP status), [`relay`] the text to the client, [`finish`]
//! charging and saving what was generated however the stream ended.

use std::time::Duration;

use chat_common::shutdown::Shutdown;
use chat_common::tokens;
use chat_proto::{CompleteChunk, Usage};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};

use super::{Charge, Policy, Turn, UsageBody, prepare};
use crate::auth::Caller;
use crate::metrics::{self, StreamOutcome};
use crate::{ApiError, Backends};

/// One server-sent event of `POST /chat/stream`.
#[derive(Debug)]
pub enum StreamEvent {
    /// First: the cleaned text, the trace id (for the user to find the trace), and the
    /// conversation the turn goes to (`None` only when the history service is down).
    Start {
        cleaned: String,
        trace_id: String,
        conversation_id: Option<String>,
    },
    /// Text to append to the reply.
    Delta(String),
    /// Last, on success.
    Done {
        usage: UsageBody,
        remaining: i64,
        model: String,
        history_saved: bool,
    },
    /// Last, when the stream broke after it started; the partial reply was saved.
    Failed(ApiError),
}

/// What a streamed chat answers first: its events, or the error that ended it before
/// the first delta (which keeps its HTTP status).
pub type StreamHead = Result<mpsc::Receiver<StreamEvent>, ApiError>;

/// Events waiting for a slow client before the relay waits for it.
const EVENT_BUFFER: usize = 64;

/// Runs to the end whatever the client does, answering the head of the stream on `head`.
pub async fn chat_stream(
    backends: Backends,
    policy: Policy,
    caller: Caller,
    text: String,
    conversation: Option<String>,
    mut head: oneshot::Sender<StreamHead>,
    stopping: Shutdown,
) {
    let turn = match prepare(&backends, &policy, caller, text, conversation).await {
        Ok(turn) => turn,
        Err(error) => {
            let _ = head.send(Err(error));
            return;
        }
    };
    let patience = backends.llm_deadline();
    let (chunks, first) = match open(&backends, &turn, &mut head, patience).await {
        Opened::Started { chunks, first } => (chunks, first),
        Opened::ClientGone => {
            metrics::stream_ended(StreamOutcome::ClientGone);
            tracing::info!("client left before the first delta; call cancelled");
            let prompt_tokens = turn.prompt_tokens;
            turn.close(Charge::Counted(prompt_tokens), "", true).await;
            return;
        }
        Opened::Failed(status) => {
            turn.abandon().await;
            let _ = head.send(Err(ApiError::from_llm(status)));
            return;
        }
    };
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let start = StreamEvent::Start {
        cleaned: turn.cleaned.clone(),
        trace_id: chat_common::telemetry::current_trace_id().unwrap_or_default(),
        conversation_id: Some(turn.conversation_id.clone()).filter(|id| !id.is_empty()),
    };
    let mut reply = String::new();
    let ending = if head.send(Ok(receiver)).is_err() || events.send(start).await.is_err() {
        Ending::ClientGone
    } else {
        relay(chunks, first, &events, patience, &mut reply, &stopping).await
    };
    finish(turn, ending, &reply, &events).await;
}

/// How opening the model's stream went.
enum Opened {
    /// The first chunk arrived: the stream is under way.
    Started {
        chunks: Box<Streaming<CompleteChunk>>,
        first: CompleteChunk,
    },
    /// The client left before the first text; the call is cancelled.
    ClientGone,
    /// The model failed, or said nothing in time.
    Failed(Status),
}

async fn open(
    backends: &Backends,
    turn: &Turn,
    head: &mut oneshot::Sender<StreamHead>,
    patience: Duration,
) -> Opened {
    let mut chunks = match backends.complete_stream(turn.completion_request()).await {
        Ok(chunks) => chunks,
        Err(status) => return Opened::Failed(status),
    };
    let first = tokio::select! {
        () = head.closed() => return Opened::ClientGone,
        first = next_chunk(&mut chunks, patience, Awaited::FirstChunk) => first,
    };
    match first {
        Ok(first) => Opened::Started {
            chunks: Box::new(chunks),
            first,
        },
        Err(status) => Opened::Failed(status),
    }
}

/// How a stream that got past its first chunk ended.
enum Ending {
    /// The final chunk arrived, with the usage of the whole completion.
    Finished { usage: Usage, model: String },
    /// The client went away.
    ClientGone,
    /// The llm service failed or went silent mid-stream.
    Broken(Status),
}

/// Relays text until the chunk with the usage, the client leaving, or the stream
/// breaking; `reply` collects what was generated. Dropping `chunks` at the end cancels
/// the call, and with it the provider's request.
async fn relay(
    mut chunks: Box<Streaming<CompleteChunk>>,
    first: CompleteChunk,
    events: &mpsc::Sender<StreamEvent>,
    patience: Duration,
    reply: &mut String,
    stopping: &Shutdown,
) -> Ending {
    let mut next = Some(first);
    loop {
        let chunk = match next.take() {
            Some(chunk) => chunk,
            None => tokio::select! {
                () = events.closed() => return Ending::ClientGone,
                // The gateway's grace is nearly over: end here, charged and saved.
                () = stopping.interrupted() => return Ending::Broken(Status::unavailable(
                    "the gateway is shutting down; the reply was cut short",
                )),
                chunk = next_chunk(&mut chunks, patience, Awaited::LaterChunk) => match chunk {
                    Ok(chunk) => chunk,
                    Err(status) => return Ending::Broken(status),
                },
            },
        };
        let CompleteChunk {
            delta,
            usage,
            model,
            ..
        } = chunk;
        if !delta.is_empty() {
            reply.push_str(&delta);
            if events.send(StreamEvent::Delta(delta)).await.is_err() {
                return Ending::ClientGone;
            }
        }
        if let Some(usage) = usage {
            return Ending::Finished { usage, model };
        }
    }
}

/// Charges and saves the turn however the stream ended, and sends the last event.
async fn finish(turn: Turn, ending: Ending, reply: &str, events: &mpsc::Sender<StreamEvent>) {
    let (usage, model) = match ending {
        Ending::Finished { usage, model } => (usage, model),
        Ending::ClientGone | Ending::Broken(_) => {
            // No usage came: charge what was generated, counted with our tokenizer.
            let used = turn.prompt_tokens + tokens::count(reply) as i64;
            turn.close(Charge::Counted(used), reply, true).await;
            if let Ending::Broken(status) = ending {
                metrics::stream_ended(StreamOutcome::Broken);
                tracing::warn!(code = ?status.code(), message = %status.message(), "llm stream broke; partial reply saved");
                let _ = events
                    .send(StreamEvent::Failed(ApiError::from_llm(status)))
                    .await;
            } else {
                metrics::stream_ended(StreamOutcome::ClientGone);
                tracing::info!(
                    chars = reply.chars().count(),
                    "client left mid-stream; partial reply saved"
                );
            }
            return;
        }
    };
    metrics::stream_ended(StreamOutcome::Finished);
    let closed = turn.close(Charge::Reported(usage), reply, false).await;
    let done = StreamEvent::Done {
        usage: usage.into(),
        remaining: closed.remaining,
        model,
        history_saved: closed.history_saved,
    };
    let _ = events.send(done).await;
}

/// Which chunk is awaited, for the words of a failure.
#[derive(Clone, Copy)]
enum Awaited {
    FirstChunk,
    LaterChunk,
}

/// The next chunk within `patience`; the end of the stream before the usage, a silence
/// and an error all end the stream.
async fn next_chunk(
    chunks: &mut Streaming<CompleteChunk>,
    patience: Duration,
    awaited: Awaited,
) -> Result<CompleteChunk, Status> {
    match tokio::time::timeout(patience, chunks.message()).await {
        Ok(Ok(Some(chunk))) => Ok(chunk),
        Ok(Ok(None)) => Err(Status::internal(match awaited {
            Awaited::FirstChunk => "the llm stream ended before any text",
            Awaited::LaterChunk => "the llm stream ended without its usage",
        })),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(match awaited {
            Awaited::FirstChunk => "no text within the llm deadline",
            Awaited::LaterChunk => "the llm stream went silent",
        })),
    }
}
