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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    System,
    #[default]
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The tools an assistant message called.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool's result: the call it answers.
    pub tool_call_id: String,
    /// The participant's name, when the client gave one.
    pub name: String,
}

/// A function the model called; `arguments` is JSON text as the model wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A piece of a streamed tool call: the first piece of call `index` names it, later
/// ones add to its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// OpenAI's request options beyond the conversation, passed to the provider as given;
/// `None` or empty leaves the provider's default. The JSON ones are checked for shape
/// by the provider that sends them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub parallel_tool_calls: Option<bool>,
    /// The client's own end-user id (OpenAI's `user`).
    pub end_user: String,
    pub response_format: Option<serde_json::Value>,
    pub tools: Option<serde_json::Value>,
    pub tool_choice: Option<serde_json::Value>,
}

/// One completion to make: the whole conversation, since providers keep no state.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub options: Options,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// As the provider reports it, which may count more than prompt and completion.
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub usage: Usage,
    /// The model that answered, often a dated version of the one asked for.
    pub model: String,
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped (`stop`, `length`, `tool_calls`, `content_filter`).
    pub finish_reason: String,
}

/// One step of a streamed completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// More of the reply.
    Delta(String),
    /// A piece of a tool call.
    ToolCall(ToolCallDelta),
    /// Why the model stopped; the usage still follows.
    Finish(String),
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

    /// The model asked for when the caller names none.
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
    let contents = request
        .messages
        .iter()
        .map(|message| message.content.as_str());
    // A tool call's name and arguments are part of what the model reads.
    let calls = request
        .messages
        .iter()
        .flat_map(|message| &message.tool_calls);
    let call_tokens: usize = calls
        .map(|call| tokens::count(&call.name) + tokens::count(&call.arguments))
        .sum();
    let prompt_tokens = (tokens::count_prompt(contents) + call_tokens) as u64;
    let completion_tokens = tokens::count(reply) as u64;
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}
