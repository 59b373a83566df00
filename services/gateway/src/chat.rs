//! The request path of one chat, start to end:
//!
//! ```text
//! filter (clean, block) → history (earlier turns, as context) → token (reserve an
//! estimate) → llm → token (settle to the real usage, or refund) → history (save both
//! messages) → reply
//! ```
//!
//! `POST /chat/stream` runs the same path with the model's reply relayed as it is
//! generated. The route handlers run every chat in a task of its own, so a client that
//! hangs up mid-chat cannot leave a reservation unsettled or a reply unsaved: a stream
//! whose client left is cancelled upstream at once, charged for what was generated,
//! and saved marked incomplete.

use std::time::Duration;

use chat_common::tokens;
use chat_common::user::validate_user_id;
use chat_proto::{
    ChatMessage, CompleteChunk, CompleteRequest, NewMessage, QuotaState, ReserveRequest, Role,
    SettleRequest, StoredMessage, Usage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use crate::{ApiError, Backends, Settings};

/// Attempts at settling a reservation before leaving it to the token service's sweeper.
const SETTLE_ATTEMPTS: u32 = 4;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub user_id: String,
    #[serde(default)]
    pub text: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatResponse {
    pub cleaned: String,
    pub reply: String,
    pub usage: UsageBody,
    /// Tokens left today after this chat was charged.
    pub remaining: i64,
    pub model: String,
    /// False when the reply could not be saved (the error is in the log).
    pub history_saved: bool,
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageBody {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens,
        }
    }
}

/// What a chat needs besides the clients: the prompt and reservation policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub context_messages: u32,
    pub context_tokens: usize,
    pub max_output_tokens: u32,
    pub min_reservation: i64,
    pub system_prompt: String,
}

impl From<&Settings> for Policy {
    fn from(settings: &Settings) -> Self {
        Self {
            context_messages: settings.context_messages,
            context_tokens: settings.context_tokens,
            max_output_tokens: settings.max_output_tokens,
            min_reservation: settings.min_reservation,
            system_prompt: settings.system_prompt.trim().to_owned(),
        }
    }
}

/// Everything before the model: validation, filter, context, reservation.
struct Prepared {
    backends: Backends,
    user_id: String,
    reservation_id: String,
    cleaned: String,
    messages: Vec<ChatMessage>,
    /// The prompt's size by our tokenizer, for charging a reply whose usage never came.
    prompt_tokens: i64,
    max_output_tokens: u32,
    remaining_after_reserve: i64,
}

async fn prepare(
    backends: &Backends,
    policy: &Policy,
    request: ChatRequest,
) -> Result<Prepared, ApiError> {
    let ChatRequest { user_id, text } = request;
    validate_user_id(&user_id).map_err(|error| ApiError::InvalidUserId(error.to_string()))?;
    if text.trim().is_empty() {
        return Err(ApiError::InvalidText("text is empty".to_owned()));
    }

    // The filter and the conversation so far are independent: ask for both at once
    // (the context of a blocked text is simply dropped).
    let (verdict, earlier) = tokio::join!(
        backends.filter(text),
        backends.history(&user_id, policy.context_messages)
    );
    let verdict = verdict.map_err(|status| match status.code() {
        Code::InvalidArgument => ApiError::InvalidText(status.message().to_owned()),
        _ => ApiError::dependency("filter", status),
    })?;
    if verdict.blocked {
        return Err(ApiError::Blocked(verdict.reason));
    }
    let cleaned = verdict.cleaned;

    // Context is a nicety: without the history service the chat goes on without it.
    let earlier = match earlier {
        Ok(earlier) => earlier,
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = %status.message(), "no conversation context: history unavailable");
            Vec::new()
        }
    };
    let Prompt {
        messages,
        tokens: prompt_tokens,
    } = prompt(policy, &earlier, &cleaned);
    let estimate =
        (prompt_tokens + i64::from(policy.max_output_tokens)).max(policy.min_reservation);

    let reservation_id = uuid::Uuid::new_v4().simple().to_string();
    let reserved = backends
        .reserve(ReserveRequest {
            user_id: user_id.clone(),
            reservation_id: reservation_id.clone(),
            tokens: estimate,
        })
        .await
        .map_err(|status| ApiError::dependency("token", status))?;
    let quota = reserved.quota.unwrap_or_default();
    if !reserved.granted {
        return Err(ApiError::QuotaExceeded(quota));
    }
    Ok(Prepared {
        backends: backends.clone(),
        user_id,
        reservation_id,
        cleaned,
        messages,
        prompt_tokens,
        max_output_tokens: policy.max_output_tokens,
        remaining_after_reserve: quota.remaining,
    })
}

/// `POST /chat`: the whole reply at once.
pub async fn chat(
    backends: &Backends,
    policy: &Policy,
    request: ChatRequest,
) -> Result<ChatResponse, ApiError> {
    let prepared = prepare(backends, policy, request).await?;
    let answer = match backends.complete(prepared.completion_request()).await {
        Ok(answer) => answer,
        Err(status) => {
            prepared.settle(0).await;
            return Err(ApiError::from_llm(status));
        }
    };
    let used = answer.usage.map_or(0, |usage| usage.total_tokens);
    // Settling and saving are independent: one round trip's time for both.
    let (quota, history_saved) =
        tokio::join!(prepared.settle(used), prepared.save(&answer.reply, false));
    Ok(ChatResponse {
        remaining: prepared.remaining(quota),
        cleaned: prepared.cleaned,
        reply: answer.reply,
        usage: answer.usage.unwrap_or_default().into(),
        model: answer.model,
        history_saved,
    })
}

/// One server-sent event of `POST /chat/stream`.
#[derive(Debug)]
pub enum StreamEvent {
    /// First: the cleaned text and the trace id, for the user to find the trace.
    Start { cleaned: String, trace_id: String },
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

/// How a stream that got past its first chunk ended.
enum Ending {
    /// The final chunk arrived, with the usage of the whole completion.
    Finished { usage: Usage, model: String },
    /// The client went away.
    ClientGone,
    /// The llm service failed or went silent mid-stream.
    Broken(tonic::Status),
}

/// `POST /chat/stream`: runs to the end whatever the client does, answering the head
/// of the stream on `head`.
pub async fn chat_stream(
    backends: Backends,
    policy: Policy,
    request: ChatRequest,
    mut head: oneshot::Sender<StreamHead>,
) {
    let prepared = match prepare(&backends, &policy, request).await {
        Ok(prepared) => prepared,
        Err(error) => {
            let _ = head.send(Err(error));
            return;
        }
    };
    let patience = backends.llm_deadline();
    let opened = backends
        .complete_stream(prepared.completion_request())
        .await;
    let first = match opened {
        Ok(mut chunks) => {
            let first = tokio::select! {
                // The client left before the first text: cancel at once.
                () = head.closed() => None,
                first = tokio::time::timeout(patience, chunks.message()) => Some(first),
            };
            match first {
                None => {
                    drop(chunks);
                    metrics::counter!("gateway_streams_total", "outcome" => "client_gone")
                        .increment(1);
                    tracing::info!("client left before the first delta; call cancelled");
                    tokio::join!(
                        prepared.settle(prepared.prompt_tokens),
                        prepared.save("", true)
                    );
                    return;
                }
                Some(Ok(Ok(Some(first)))) => Ok((chunks, first)),
                Some(Ok(Ok(None))) => Err(tonic::Status::internal(
                    "the llm stream ended before any text",
                )),
                Some(Ok(Err(status))) => Err(status),
                Some(Err(_)) => Err(tonic::Status::deadline_exceeded(
                    "no text within the llm deadline",
                )),
            }
        }
        Err(status) => Err(status),
    };
    let (mut chunks, first) = match first {
        Ok(started) => started,
        Err(status) => {
            prepared.settle(0).await;
            let _ = head.send(Err(ApiError::from_llm(status)));
            return;
        }
    };

    let (events, receiver) = mpsc::channel(64);
    let trace_id = chat_common::telemetry::current_trace_id().unwrap_or_default();
    let start = StreamEvent::Start {
        cleaned: prepared.cleaned.clone(),
        trace_id,
    };
    let mut reply = String::new();
    let ending = if head.send(Ok(receiver)).is_err() || events.send(start).await.is_err() {
        Ending::ClientGone
    } else {
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(chunk) => chunk,
                None => {
                    let message = tokio::select! {
                        () = events.closed() => break Ending::ClientGone,
                        message = tokio::time::timeout(patience, chunks.message()) => message,
                    };
                    match message {
                        Ok(Ok(Some(chunk))) => chunk,
                        Ok(Ok(None)) => {
                            break Ending::Broken(tonic::Status::internal(
                                "the llm stream ended without its usage",
                            ));
                        }
                        Ok(Err(status)) => break Ending::Broken(status),
                        Err(_) => {
                            break Ending::Broken(tonic::Status::deadline_exceeded(
                                "the llm stream went silent",
                            ));
                        }
                    }
                }
            };
            let CompleteChunk {
                delta,
                usage,
                model,
            } = chunk;
            if !delta.is_empty() {
                reply.push_str(&delta);
                if events.send(StreamEvent::Delta(delta)).await.is_err() {
                    break Ending::ClientGone;
                }
            }
            if let Some(usage) = usage {
                break Ending::Finished { usage, model };
            }
        }
    };
    // Dropping the stream cancels the call, and with it the provider's request.
    drop(chunks);

    match ending {
        Ending::Finished { usage, model } => {
            metrics::counter!("gateway_streams_total", "outcome" => "finished").increment(1);
            let (quota, history_saved) = tokio::join!(
                prepared.settle(usage.total_tokens),
                prepared.save(&reply, false)
            );
            let done = StreamEvent::Done {
                usage: usage.into(),
                remaining: prepared.remaining(quota),
                model,
                history_saved,
            };
            let _ = events.send(done).await;
        }
        Ending::ClientGone | Ending::Broken(_) => {
            // No usage came: charge what was generated, counted with our tokenizer.
            let used = prepared.prompt_tokens + tokens::count(&reply) as i64;
            tokio::join!(prepared.settle(used), prepared.save(&reply, true));
            if let Ending::Broken(status) = ending {
                metrics::counter!("gateway_streams_total", "outcome" => "broken").increment(1);
                tracing::warn!(code = ?status.code(), message = %status.message(), "llm stream broke; partial reply saved");
                let _ = events
                    .send(StreamEvent::Failed(ApiError::from_llm(status)))
                    .await;
            } else {
                metrics::counter!("gateway_streams_total", "outcome" => "client_gone").increment(1);
                tracing::info!(
                    chars = reply.chars().count(),
                    "client left mid-stream; partial reply saved"
                );
            }
        }
    }
}

/// The conversation sent to the model: the system prompt, as many of the latest
/// earlier turns as fit the token budget (oldest dropped first), the new message.
fn prompt(policy: &Policy, earlier: &[StoredMessage], cleaned: &str) -> Prompt {
    let mut budget = policy.context_tokens;
    // Newest first, each with its cost, so every text is tokenized once.
    let mut kept: Vec<(&StoredMessage, usize)> = Vec::new();
    for message in earlier.iter().rev() {
        let cost = tokens::count(&message.text) + tokens::PER_MESSAGE_OVERHEAD;
        if cost > budget {
            break;
        }
        budget -= cost;
        kept.push((message, cost));
    }
    // A conversation the model sees should open with the user, not a dangling reply.
    while kept
        .last()
        .is_some_and(|(message, _)| message.role() == Role::Assistant)
    {
        kept.pop();
    }
    let mut total = tokens::REPLY_PRIMING + tokens::count(cleaned) + tokens::PER_MESSAGE_OVERHEAD;
    total += kept.iter().map(|(_, cost)| cost).sum::<usize>();
    let system = (!policy.system_prompt.is_empty()).then(|| {
        total += tokens::count(&policy.system_prompt) + tokens::PER_MESSAGE_OVERHEAD;
        ChatMessage {
            role: Role::System.into(),
            content: policy.system_prompt.clone(),
        }
    });
    let messages = system
        .into_iter()
        .chain(kept.into_iter().rev().map(|(message, _)| ChatMessage {
            role: message.role,
            content: message.text.clone(),
        }))
        .chain(std::iter::once(ChatMessage {
            role: Role::User.into(),
            content: cleaned.to_owned(),
        }))
        .collect();
    Prompt {
        messages,
        tokens: total as i64,
    }
}

/// The messages sent to the model and what they cost, overhead included.
struct Prompt {
    messages: Vec<ChatMessage>,
    tokens: i64,
}

impl Prepared {
    fn completion_request(&self) -> CompleteRequest {
        CompleteRequest {
            messages: self.messages.clone(),
            max_tokens: self.max_output_tokens,
            user_id: self.user_id.clone(),
        }
    }

    /// Tokens left after settling, or after reserving when the settlement failed.
    fn remaining(&self, settled: Option<QuotaState>) -> i64 {
        settled.map_or(self.remaining_after_reserve, |quota| quota.remaining)
    }

    /// Settles the reservation to `used` tokens (0 refunds it), retrying a few times.
    /// If every attempt fails, the token service's sweeper refunds the reservation
    /// when it expires; that is logged loudly, as the real usage goes uncharged.
    async fn settle(&self, used: i64) -> Option<QuotaState> {
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=SETTLE_ATTEMPTS {
            let settled = self
                .backends
                .settle(SettleRequest {
                    user_id: self.user_id.clone(),
                    reservation_id: self.reservation_id.clone(),
                    actual_tokens: used,
                })
                .await;
            match settled {
                Ok(settled) => return settled.quota,
                Err(status) if attempt < SETTLE_ATTEMPTS => {
                    tracing::warn!(attempt, code = ?status.code(), message = %status.message(), "settlement failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                }
                Err(status) => tracing::error!(
                    user_id = %self.user_id,
                    reservation_id = %self.reservation_id,
                    used,
                    code = ?status.code(),
                    message = %status.message(),
                    "settlement failed for good; the sweeper will refund the reservation and this usage goes uncharged"
                ),
            }
        }
        None
    }

    /// Saves the user's message and the reply; one retry, then a loud log.
    async fn save(&self, reply: &str, incomplete: bool) -> bool {
        let messages = vec![
            NewMessage {
                role: Role::User.into(),
                text: self.cleaned.clone(),
                incomplete: false,
            },
            NewMessage {
                role: Role::Assistant.into(),
                text: reply.to_owned(),
                incomplete,
            },
        ];
        for attempt in 1..=2 {
            match self.backends.save(&self.user_id, messages.clone()).await {
                Ok(_) => return true,
                Err(status) => tracing::error!(
                    attempt,
                    user_id = %self.user_id,
                    code = ?status.code(),
                    message = %status.message(),
                    "saving the chat to history failed"
                ),
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(role: Role, text: &str) -> StoredMessage {
        StoredMessage {
            role: role.into(),
            text: text.to_owned(),
            ..StoredMessage::default()
        }
    }

    fn policy(context_tokens: usize, system_prompt: &str) -> Policy {
        Policy {
            context_messages: 20,
            context_tokens,
            max_output_tokens: 100,
            min_reservation: 200,
            system_prompt: system_prompt.to_owned(),
        }
    }

    #[test]
    fn the_prompt_keeps_the_latest_turns_that_fit() {
        let earlier = [
            stored(Role::User, "one two three four five six seven eight"),
            stored(Role::Assistant, "first reply"),
            stored(Role::User, "second question"),
            stored(Role::Assistant, "second reply"),
        ];
        let Prompt {
            messages: all,
            tokens,
        } = prompt(&policy(1000, "be brief"), &earlier, "now");
        let contents = all.iter().map(|m| m.content.as_str());
        assert_eq!(
            tokens,
            tokens::count_prompt(contents) as i64,
            "counted once, counted right"
        );
        let contents: Vec<&str> = all.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            contents,
            [
                "be brief",
                "one two three four five six seven eight",
                "first reply",
                "second question",
                "second reply",
                "now"
            ]
        );
        assert_eq!(all[0].role(), Role::System);

        // A small budget drops the oldest turns, and never opens on an assistant reply.
        let some = prompt(&policy(12, ""), &earlier, "now").messages;
        let contents: Vec<&str> = some.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["second question", "second reply", "now"]);

        let none = prompt(&policy(0, ""), &earlier, "now").messages;
        assert_eq!(none.len(), 1);
    }
}
