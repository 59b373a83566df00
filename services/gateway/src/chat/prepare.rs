//! Everything before the model: validation, (filter ‖ context, then the reservation)
//! ‖ retrieval, prompt.
//! A new step before the model call belongs here.

use chat_proto::{ChatMessage, CompleteRequest, NewMessage, Role, SaveRequest, StoredMessage};
use tonic::Code;

use super::Policy;
use super::prompt::Prompt;
use super::reservation::{Charge, Reservation};
use super::retrieval;
use crate::auth::Caller;
use crate::{ApiError, Backends};

/// A chat turn ready for the model: what to send, and what it holds until it is closed.
pub struct Turn {
    backends: Backends,
    pub user_id: String,
    /// The conversation the turn goes to; empty when the history service could not say
    /// (the save then starts a new one).
    pub conversation_id: String,
    /// Whether the caller named the conversation (else it is their latest).
    named: bool,
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
    /// Where the turn was saved (or was to be, when saving failed).
    pub conversation_id: String,
}

/// Filters the caller's text while fetching the context and retrieving earlier
/// messages, builds the prompt and reserves its estimate. The caller was authenticated
/// and rate limited by the route.
pub async fn prepare(
    backends: &Backends,
    policy: &Policy,
    caller: Caller,
    text: String,
    conversation: Option<String>,
) -> Result<Turn, ApiError> {
    let user_id = caller.user_id.clone();
    let named = conversation.as_ref().is_some_and(|id| !id.is_empty());
    if text.trim().is_empty() {
        return Err(ApiError::InvalidText("text is empty".to_owned()));
    }

    // The filter, the conversation so far and the retrieval of earlier messages are
    // independent: ask for all three at once. The reservation waits for the first two
    // only, with room held for what retrieval may add, so a search slower than them
    // overlaps the reserve instead of delaying it; a blocked text, a missing
    // conversation or a refused reservation drops the search.
    let reserved = async {
        let (verdict, context) = tokio::join!(
            backends.filter(text.clone()),
            context(backends, &user_id, conversation, policy.context_messages),
        );
        let (conversation_id, earlier) = context?;
        let verdict = verdict.map_err(|status| match status.code() {
            Code::InvalidArgument => ApiError::InvalidText(status.message().to_owned()),
            _ => ApiError::dependency("filter", status),
        })?;
        if verdict.blocked {
            return Err(ApiError::Blocked(verdict.reason));
        }
        let prompt = Prompt::build(policy, &earlier, &verdict.cleaned);
        let mut estimate = prompt.reservation(policy);
        // Held beside the reply's, unscaled: the calibration applies to our count of
        // the prompt, and the settlement says what the prompt sent came to.
        estimate.output_tokens += retrieval::room(backends, policy) as i64;
        let reservation = Reservation::take(backends, &caller, &estimate).await?;
        Ok((
            conversation_id,
            earlier,
            verdict.cleaned,
            prompt,
            reservation,
        ))
    };
    let retrieved = async { Ok(retrieval::retrieve(backends, policy, &user_id, &text).await) };
    let ((conversation_id, earlier, cleaned, prompt, mut reservation), retrieved) =
        tokio::try_join!(reserved, retrieved)?;
    // Retrieval ran before the conversation was known: scope it now if it must be.
    let retrieved = retrieval::in_scope(retrieved, policy.retrieval_scope, &conversation_id);
    let prompt = prompt.with_retrieved(retrieval::context_block(
        &retrieved,
        &earlier,
        policy.retrieval_tokens,
    ));
    reservation.prompt_sent(prompt.tokens);
    Ok(Turn {
        backends: backends.clone(),
        user_id,
        conversation_id,
        named,
        cleaned,
        messages: prompt.messages,
        prompt_tokens: prompt.tokens,
        max_output_tokens: policy.max_output_tokens,
        reservation,
    })
}

/// The conversation a turn goes to, and its earlier messages: the one named, which must
/// be the caller's (404 otherwise), or else their most recently active one (a new one
/// when they have none). Context is a nicety: without the history service the chat goes
/// on without it.
async fn context(
    backends: &Backends,
    user_id: &str,
    conversation: Option<String>,
    limit: u32,
) -> Result<(String, Vec<StoredMessage>), ApiError> {
    let named = conversation.filter(|id| !id.is_empty());
    let answer = match &named {
        Some(id) => backends
            .context(user_id, id, limit)
            .await
            .map(|earlier| (id.clone(), earlier))
            .map_err(|status| (status, true)),
        None => backends
            .latest_context(user_id, limit)
            .await
            .map_err(|status| (status, false)),
    };
    match answer {
        Ok(context) => Ok(context),
        Err((status, true)) if status.code() == Code::NotFound => {
            Err(ApiError::NotFound("no such conversation".to_owned()))
        }
        Err((status, _)) => {
            tracing::warn!(code = ?status.code(), message = %status.message(), "no conversation context: history unavailable");
            // A chat naming no conversation then saves to a new one.
            Ok((named.unwrap_or_default(), Vec::new()))
        }
    }
}

impl Turn {
    pub fn completion_request(&self) -> CompleteRequest {
        CompleteRequest {
            messages: self.messages.clone(),
            max_tokens: self.max_output_tokens,
            user_id: self.user_id.clone(),
            ..CompleteRequest::default()
        }
    }

    /// The model was never reached, or failed before any text: nothing is charged and
    /// nothing saved.
    pub async fn abandon(self) {
        self.reservation.refund().await;
    }

    /// Charges `charge` and saves the user's message with `reply`, at the same time:
    /// they do not depend on each other.
    pub async fn close(self, charge: Charge, reply: &str, incomplete: bool) -> Closed {
        let Self {
            backends,
            user_id,
            conversation_id,
            named,
            cleaned,
            reservation,
            ..
        } = self;
        let turn = SaveRequest {
            user_id,
            messages: vec![
                NewMessage {
                    role: Role::User.into(),
                    text: cleaned.clone(),
                    incomplete: false,
                },
                NewMessage {
                    role: Role::Assistant.into(),
                    text: reply.to_owned(),
                    incomplete,
                },
            ],
            conversation_id: conversation_id.clone(),
            ..SaveRequest::default()
        };
        let (remaining, saved) =
            tokio::join!(reservation.settle(charge), backends.save_turn(turn, !named));
        Closed {
            cleaned,
            remaining,
            history_saved: saved.is_some(),
            conversation_id: saved
                .map(|saved| saved.conversation_id)
                .filter(|id| !id.is_empty())
                .unwrap_or(conversation_id),
        }
    }
}
