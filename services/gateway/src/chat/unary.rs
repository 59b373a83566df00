//! `POST /chat`: the whole reply at once.

use super::{Charge, ChatResponse, Policy, prepare};
use crate::auth::Caller;
use crate::{ApiError, Backends};

pub async fn chat(
    backends: &Backends,
    policy: &Policy,
    caller: Caller,
    text: String,
    conversation: Option<String>,
) -> Result<ChatResponse, ApiError> {
    let turn = prepare(backends, policy, caller, text, conversation).await?;
    let answer = match backends.complete(turn.completion_request()).await {
        Ok(answer) => answer,
        Err(status) => {
            turn.abandon().await;
            return Err(ApiError::from_llm(status));
        }
    };
    let charge = answer.usage.map_or(Charge::Counted(0), Charge::Reported);
    let closed = turn.close(charge, &answer.reply, false).await;
    Ok(ChatResponse {
        cleaned: closed.cleaned,
        reply: answer.reply,
        usage: answer.usage.unwrap_or_default().into(),
        remaining: closed.remaining,
        model: answer.model,
        history_saved: closed.history_saved,
        conversation_id: Some(closed.conversation_id).filter(|id| !id.is_empty()),
    })
}
