//! Where completions come from. The service, the retry policy and the metrics see only
//! the [`Provider`] trait and the types below, so adding a provider kind is adding a
//! module next to `openai.rs` and `mock.rs`, a [`ProviderKind`] and its arm in
//! [`from_settings`].

mod mock;
mod openai;

use std::sync::Arc;

use chat_common::tokens;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use secrecy::ExposeSecret;

use crate::Settings;
use crate::error::LlmError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Mock,
}

impl ProviderKind {
    /// The name tracing backends expect in `gen_ai.system`.
    pub fn system(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Mock => "mock",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// One completion to make: the whole conversation, since providers keep no state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// As the provider reports it, which may count more than prompt and completion.
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, often a dated version of the one asked for.
    pub model: String,
}

/// One step of a streamed completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// More of the reply.
    Delta(String),
    /// The provider named the model answering; sent when that name changes, so a
    /// stream cut short is still billed to the model that wrote it.
    Model(String),
    /// The reply is complete and this is what it cost; nothing follows.
    Usage(Usage),
}

pub type EventStream = BoxStream<'static, Result<StreamEvent, LlmError>>;

/// A source of completions. Futures are boxed so the service can hold any provider
/// as `dyn Provider`; each call is one attempt, as retrying is the service's policy.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// The model asked for.
    fn model(&self) -> &str;

    fn complete<'a>(&'a self, request: &'a Completion) -> BoxFuture<'a, Result<Reply, LlmError>>;

    /// Opens a stream that ends with [`StreamEvent::Usage`] or an error. The request is
    /// shared because the stream outlives the call and may need it to count usage.
    fn complete_stream<'a>(
        &'a self,
        request: &'a Arc<Completion>,
    ) -> BoxFuture<'a, Result<EventStream, LlmError>>;

    /// Whether a stream cut short still costs what was generated, as it does with a
    /// real provider, which has spent the tokens whether anyone read them or not.
    fn bills_cut_short_streams(&self) -> bool {
        true
    }
}

/// The provider `settings` ask for, or why there is none.
pub fn from_settings(settings: &Settings) -> anyhow::Result<Box<dyn Provider>> {
    let key = settings
        .openai_api_key
        .clone()
        .filter(|key| !key.expose_secret().trim().is_empty());
    Ok(match (settings.llm_provider.as_str(), key) {
        ("mock", _) | ("auto", None) => Box::new(mock::Mock::new(settings)),
        ("openai" | "auto", Some(api_key)) => Box::new(openai::OpenAi::new(settings, api_key)),
        ("openai", None) => {
            anyhow::bail!("LLM_PROVIDER is openai but OPENAI_API_KEY is not set")
        }
        (other, _) => anyhow::bail!("LLM_PROVIDER must be auto, openai or mock, not {other:?}"),
    })
}

/// What a completion costs when the provider did not say: the prompt and the reply
/// counted with the tokenizer, rather than charging nothing.
pub fn counted_usage(request: &Completion, reply: &str) -> Usage {
    let prompt_tokens = tokens::count_prompt(
        request
            .messages
            .iter()
            .map(|message| message.content.as_str()),
    ) as u64;
    let completion_tokens = tokens::count(reply) as u64;
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}
