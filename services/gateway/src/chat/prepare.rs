//! Everything before the model: validation, filter ‖ context, prompt, reservation.
//! A new step before the model call belongs here.

use chat_proto::{ChatMessage, CompleteRequest, NewMessage, Role};
use tonic::Code;

use super::Policy;
use super::prompt::Prompt;
use super::reservation::Reservation;
use crate::auth::Caller;
use crate::{ApiError, Backends};

/// A chat turn ready for the model: what to send, and what it holds until it is closed.
pub struct Turn {
    backends: Backends,
    pub user_id: String,
    /// The user's text as the filter cleaned it: what the model sees and history keeps.
    pub cleaned: String,
    messages: Vec<ChatMessage>,
    /// The prompt's size by our tokenizer, for charging a reply whose usage never came.
    pub prompt_tokens: i64,
    max_output_tokens: u32,
    reservation: Reservation,
}

/// What closing a turn reports.
pub struct Closed {
    /// The user's text as cleaned, handed back.
    pub cleaned: String,
    /// Tokens left today after the turn was charged.
    pub remaining: i64,
    pub history_saved: bool,
}

/// Filters the caller's text while fetching the context, builds the prompt and
/// reserves its estimate. The caller was authenticated and rate limited by the route.
pub async fn prepare(
    backends: &Backends,
    policy: &Policy,
    caller: Caller,
    text: String,
) -> Result<Turn, ApiError> {
    let user_id = caller.user_id.clone();
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
    // Context is a nicety: without the history service the chat goes on without it.
    let earlier = earlier.unwrap_or_else(|status| {
        tracing::warn!(code = ?status.code(), message = %status.message(), "no conversation context: history unavailable");
        Vec::new()
    });
    let prompt = Prompt::build(policy, &earlier, &verdict.cleaned);
    let reservation = Reservation::take(backends, &caller, prompt.reservation(policy)).await?;
    Ok(Turn {
        backends: backends.clone(),
        user_id,
        cleaned: verdict.cleaned,
        messages: prompt.messages,
        prompt_tokens: prompt.tokens,
        max_output_tokens: policy.max_output_tokens,
        reservation,
    })
}

impl Turn {
    pub fn completion_request(&self) -> CompleteRequest {
        CompleteRequest {
            messages: self.messages.clone(),
            max_tokens: self.max_output_tokens,
            user_id: self.user_id.clone(),
        }
    }

    /// The model was never reached, or failed before any text: nothing is charged and
    /// nothing saved.
    pub async fn abandon(self) {
        self.reservation.refund().await;
    }

    /// Charges `used` tokens and saves the user's message with `reply`, at the same
    /// time: they do not depend on each other.
    pub async fn close(self, used: i64, reply: &str, incomplete: bool) -> Closed {
        let Self {
            backends,
            user_id,
            cleaned,
            reservation,
            ..
        } = self;
        let (remaining, history_saved) = tokio::join!(
            reservation.settle(used),
            save(&backends, &user_id, &cleaned, reply, incomplete)
        );
        Closed {
            cleaned,
            remaining,
            history_saved,
        }
    }
}

/// Saves the user's message and the reply; one retry, then a loud log.
async fn save(
    backends: &Backends,
    user_id: &str,
    cleaned: &str,
    reply: &str,
    incomplete: bool,
) -> bool {
    let messages = vec![
        NewMessage {
            role: Role::User.into(),
            text: cleaned.to_owned(),
            incomplete: false,
        },
        NewMessage {
            role: Role::Assistant.into(),
            text: reply.to_owned(),
            incomplete,
        },
    ];
    for attempt in 1..=2 {
        match backends.save(user_id, messages.clone()).await {
            Ok(_) => return true,
            Err(status) => tracing::error!(
                attempt,
                user_id,
                code = ?status.code(),
                message = %status.message(),
                "saving the chat to history failed"
            ),
        }
    }
    false
}
