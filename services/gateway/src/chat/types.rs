//! The JSON a chat takes and answers, and the policy it runs under.

use chat_proto::Usage;
use serde::{Deserialize, Serialize};

use crate::Settings;

/// The body of `POST /chat` and `/chat/stream`. With a credential `user_id` may be left
/// out (it is the caller's); in trust mode it is required.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub text: String,
    /// The caller's conversation to continue; without one, their most recently active
    /// conversation (a new one when they have none).
    #[serde(default)]
    pub conversation_id: Option<String>,
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
    /// The conversation the turn belongs to; null only when the history service could
    /// be reached neither before nor after the model.
    pub conversation_id: Option<String>,
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
    /// Token budget of retrieved context; 0 when retrieval is off.
    pub retrieval_tokens: usize,
    pub retrieval_scope: crate::RetrievalScope,
    /// The model the chat's calls go to (`OPENAI_MODEL`): its reservations are sized
    /// by what the provider has reported for it.
    pub model: String,
}

impl From<&Settings> for Policy {
    fn from(settings: &Settings) -> Self {
        Self {
            context_messages: settings.context_messages,
            context_tokens: settings.context_tokens,
            max_output_tokens: settings.max_output_tokens,
            min_reservation: settings.min_reservation,
            system_prompt: settings.system_prompt.trim().to_owned(),
            retrieval_tokens: match settings.retrieval {
                crate::Switch::On => settings.retrieval_tokens,
                crate::Switch::Off => 0,
            },
            retrieval_scope: settings.retrieval_scope,
            model: settings.openai_model.clone(),
        }
    }
}
