//! The request path of one chat, start to end:
//!
//! ```text
//! filter (clean, block) → history (earlier turns, as context) → token (reserve an
//! estimate) → llm → token (settle to the real usage, or refund) → history (save both
//! messages) → reply
//! ```
//!
//! Once a reservation is granted, the rest runs in a task of its own, so a client that
//! hangs up mid-chat cannot leave the reservation unsettled or the reply unsaved.

use std::time::Duration;

use chat_common::tokens;
use chat_common::user::validate_user_id;
use chat_proto::{
    ChatMessage, CompleteRequest, NewMessage, QuotaState, ReserveRequest, Role, SettleRequest,
    StoredMessage, Usage,
};
use serde::{Deserialize, Serialize};
use tonic::Code;
use tracing::Instrument;

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

pub async fn chat(
    backends: &Backends,
    policy: &Policy,
    request: ChatRequest,
) -> Result<ChatResponse, ApiError> {
    let ChatRequest { user_id, text } = request;
    validate_user_id(&user_id).map_err(|error| ApiError::InvalidUserId(error.to_string()))?;
    if text.trim().is_empty() {
        return Err(ApiError::InvalidText("text is empty".to_owned()));
    }

    let verdict = backends
        .filter(text)
        .await
        .map_err(|status| match status.code() {
            Code::InvalidArgument => ApiError::InvalidText(status.message().to_owned()),
            _ => ApiError::dependency("filter", status),
        })?;
    if verdict.blocked {
        return Err(ApiError::Blocked(verdict.reason));
    }
    let cleaned = verdict.cleaned;

    // Context is a nicety: without the history service the chat goes on without it.
    let earlier = match backends.history(&user_id, policy.context_messages).await {
        Ok(earlier) => earlier,
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = %status.message(), "no conversation context: history unavailable");
            Vec::new()
        }
    };
    let messages = prompt(policy, &earlier, &cleaned);
    let prompt_tokens =
        tokens::count_prompt(messages.iter().map(|message| message.content.as_str())) as i64;
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

    let open = OpenChat {
        backends: backends.clone(),
        user_id,
        reservation_id,
        cleaned,
        messages,
        max_output_tokens: policy.max_output_tokens,
        remaining_after_reserve: quota.remaining,
    };
    tokio::spawn(open.finish().in_current_span())
        .await
        .map_err(|error| {
            tracing::error!(%error, "chat task failed");
            ApiError::dependency("gateway", tonic::Status::internal("chat task failed"))
        })?
}

/// The conversation sent to the model: the system prompt, as many of the latest
/// earlier turns as fit the token budget (oldest dropped first), the new message.
fn prompt(policy: &Policy, earlier: &[StoredMessage], cleaned: &str) -> Vec<ChatMessage> {
    let mut budget = policy.context_tokens;
    let mut kept: Vec<ChatMessage> = Vec::new();
    for message in earlier.iter().rev() {
        let cost = tokens::count(&message.text) + tokens::PER_MESSAGE_OVERHEAD;
        if cost > budget {
            break;
        }
        budget -= cost;
        kept.push(ChatMessage {
            role: message.role,
            content: message.text.clone(),
        });
    }
    // A conversation the model sees should open with the user, not a dangling reply.
    while kept
        .last()
        .is_some_and(|message| message.role() == Role::Assistant)
    {
        kept.pop();
    }
    let system = (!policy.system_prompt.is_empty()).then(|| ChatMessage {
        role: Role::System.into(),
        content: policy.system_prompt.clone(),
    });
    system
        .into_iter()
        .chain(kept.into_iter().rev())
        .chain(std::iter::once(ChatMessage {
            role: Role::User.into(),
            content: cleaned.to_owned(),
        }))
        .collect()
}

/// A chat whose reservation is granted: from here on it must be settled.
struct OpenChat {
    backends: Backends,
    user_id: String,
    reservation_id: String,
    cleaned: String,
    messages: Vec<ChatMessage>,
    max_output_tokens: u32,
    remaining_after_reserve: i64,
}

impl OpenChat {
    async fn finish(self) -> Result<ChatResponse, ApiError> {
        let completion = self
            .backends
            .complete(CompleteRequest {
                messages: self.messages.clone(),
                max_tokens: self.max_output_tokens,
                user_id: self.user_id.clone(),
            })
            .await;
        let used = completion
            .as_ref()
            .ok()
            .and_then(|answer| answer.usage)
            .map_or(0, |usage| usage.total_tokens);
        let quota = self.settle(used).await;
        let answer = completion.map_err(ApiError::from_llm)?;
        let history_saved = self.save(&answer.reply).await;
        Ok(ChatResponse {
            cleaned: self.cleaned,
            reply: answer.reply,
            usage: answer.usage.unwrap_or_default().into(),
            remaining: quota.map_or(self.remaining_after_reserve, |quota| quota.remaining),
            model: answer.model,
            history_saved,
        })
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
    async fn save(&self, reply: &str) -> bool {
        let messages = vec![
            NewMessage {
                role: Role::User.into(),
                text: self.cleaned.clone(),
            },
            NewMessage {
                role: Role::Assistant.into(),
                text: reply.to_owned(),
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
        let all = prompt(&policy(1000, "be brief"), &earlier, "now");
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
        let some = prompt(&policy(12, ""), &earlier, "now");
        let contents: Vec<&str> = some.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["second question", "second reply", "now"]);

        let none = prompt(&policy(0, ""), &earlier, "now");
        assert_eq!(none.len(), 1);
    }
}
