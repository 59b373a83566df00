//! OpenAI's Chat Completions API, or any server that speaks it (Ollama, vLLM,
//! LM Studio, ...), through async-openai. A streamed answer's chunks are read in `stream`.

mod stream;

use std::sync::Arc;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionMessageToolCalls, ChatCompletionStreamOptions, CompletionUsage,
    CreateChatCompletionRequest, CreateChatCompletionResponse, FinishReason,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::{
    Completion, EventStream, Message, Provider, ProviderKind, Reply, Role, ToolCall, Usage,
    counted_usage,
};
use crate::Settings;
use crate::error::LlmError;
use stream::Events;

pub struct OpenAi {
    client: Client<OpenAIConfig>,
    model: String,
    /// Kept to scrub it from any error text we pass on: users read those messages.
    api_key: SecretString,
}

impl OpenAi {
    pub fn new(settings: &Settings, api_key: SecretString) -> Self {
        let config = OpenAIConfig::new()
            .with_api_key(api_key.expose_secret())
            .with_api_base(settings.openai_base_url.trim_end_matches('/'));
        // Our own retry policy knows the caller's deadline; the client's built-in
        // retries (three, on 429 and 5xx) would multiply it and ignore the deadline.
        let transport = ReqwestService::new(reqwest::Client::new());
        tracing::info!(
            base_url = %settings.openai_base_url,
            model = %settings.openai_model,
            "llm provider: openai-compatible"
        );
        Self {
            client: Client::with_config(config).with_http_service(transport),
            model: settings.openai_model.clone(),
            api_key,
        }
    }

    /// The request in OpenAI's JSON, read back into async-openai's type: a field of a
    /// shape the API cannot take (a malformed tool, say) is refused here, naming it.
    fn body(request: &Completion) -> Result<CreateChatCompletionRequest, LlmError> {
        let options = &request.options;
        let mut body = Map::new();
        body.insert("model".into(), request.model.clone().into());
        let messages = request.messages.iter().map(to_openai).collect();
        body.insert("messages".into(), Value::Array(messages));
        body.insert("max_completion_tokens".into(), request.max_tokens.into());
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                body.insert(name.to_owned(), value);
            }
        };
        put("temperature", options.temperature.map(Value::from));
        put("top_p", options.top_p.map(Value::from));
        put(
            "stop",
            (!options.stop.is_empty()).then(|| Value::from(options.stop.clone())),
        );
        put("seed", options.seed.map(Value::from));
        put(
            "presence_penalty",
            options.presence_penalty.map(Value::from),
        );
        put(
            "frequency_penalty",
            options.frequency_penalty.map(Value::from),
        );
        put(
            "parallel_tool_calls",
            options.parallel_tool_calls.map(Value::from),
        );
        put(
            "user",
            (!options.end_user.is_empty()).then(|| Value::from(options.end_user.clone())),
        );
        put("response_format", options.response_format.clone());
        put("tools", options.tools.clone());
        put("tool_choice", options.tool_choice.clone());
        serde_json::from_value(Value::Object(body)).map_err(|error| {
            LlmError::InvalidRequest(format!("the request cannot be sent as it is: {error}"))
        })
    }

    fn failure(&self, error: OpenAIError) -> LlmError {
        let (failure, detail) = explain(error, &self.api_key);
        match failure {
            Failure::Transient => LlmError::Transient(detail),
            Failure::InsufficientQuota => LlmError::InsufficientQuota(detail),
            Failure::Refused => LlmError::InvalidRequest(detail),
            Failure::Permanent => LlmError::Provider(detail),
        }
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn complete<'a>(&'a self, request: &'a Completion) -> BoxFuture<'a, Result<Reply, LlmError>> {
        async move {
            let answer = self.client.chat().create(Self::body(request)?).await;
            let answer = answer.map_err(|error| self.failure(error))?;
            Ok(from_openai(answer, request))
        }
        .boxed()
    }

    fn complete_stream<'a>(
        &'a self,
        request: &'a Arc<Completion>,
    ) -> BoxFuture<'a, Result<EventStream, LlmError>> {
        async move {
            let mut body = Self::body(request)?;
            body.stream = Some(true);
            // Without it OpenAI reports no usage on a stream at all.
            body.stream_options = Some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                ..ChatCompletionStreamOptions::default()
            });
            let upstream = self.client.chat().create_stream(body).await;
            let upstream = upstream.map_err(|error| self.failure(error))?;
            Ok(Events::new(upstream, Arc::clone(request), self.api_key.clone()).into_stream())
        }
        .boxed()
    }
}

/// A message in OpenAI's JSON.
fn to_openai(message: &Message) -> Value {
    let role = match message.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut out = json!({"role": role, "content": message.content});
    if !message.name.is_empty() {
        out["name"] = message.name.clone().into();
    }
    if message.role == Role::Tool {
        out["tool_call_id"] = message.tool_call_id.clone().into();
    }
    if !message.tool_calls.is_empty() {
        if message.content.is_empty() {
            out["content"] = Value::Null;
        }
        let calls = message.tool_calls.iter().map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}
            })
        });
        out["tool_calls"] = Value::Array(calls.collect());
    }
    out
}

fn from_openai(answer: CreateChatCompletionResponse, request: &Completion) -> Reply {
    let (message, finish_reason) = match answer.choices.into_iter().next() {
        Some(choice) => (choice.message, choice.finish_reason),
        None => Default::default(),
    };
    let text = message.content.or(message.refusal).unwrap_or_default();
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .into_iter()
        .flatten()
        .map(|call| match call {
            ChatCompletionMessageToolCalls::Function(call) => ToolCall {
                id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
            },
            ChatCompletionMessageToolCalls::Custom(call) => ToolCall {
                id: call.id,
                name: call.custom_tool.name,
                arguments: call.custom_tool.input,
            },
        })
        .collect();
    let usage = match answer.usage {
        Some(usage) => usage_of(usage),
        // Some compatible servers report no usage: count it ourselves rather than
        // charge nothing.
        None => {
            let arguments = tool_calls.iter().map(|call| call.arguments.as_str());
            let written: String = std::iter::once(text.as_str()).chain(arguments).collect();
            counted_usage(request, &written)
        }
    };
    Reply {
        text,
        usage,
        model: answer.model,
        tool_calls,
        finish_reason: finish_reason.map_or("stop", finish_name).to_owned(),
    }
}

/// OpenAI's name of a finish reason.
fn finish_name(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::FunctionCall => "function_call",
    }
}

fn usage_of(reported: CompletionUsage) -> Usage {
    Usage {
        prompt_tokens: u64::from(reported.prompt_tokens),
        completion_tokens: u64::from(reported.completion_tokens),
        total_tokens: u64::from(reported.total_tokens),
    }
}

/// What a failed call means for the caller.
enum Failure {
    /// Worth retrying after a pause: rate limited or overloaded.
    Transient,
    /// The account has no credit.
    InsufficientQuota,
    /// The provider refused the request as sent (400, 422): the caller's to fix.
    Refused,
    Permanent,
}

/// The meaning of `error`, and its text for the caller (not yet scrubbed).
fn classify(error: OpenAIError) -> (Failure, String) {
    match error {
        OpenAIError::ApiError(response) => {
            let api = &response.api_error;
            let no_credit = api.code.as_deref() == Some("insufficient_quota")
                || api.r#type.as_deref() == Some("insufficient_quota");
            let status = response.status_code.as_u16();
            let detail = format!(
                "{status} {}",
                api.message.chars().take(300).collect::<String>()
            );
            if no_credit {
                (Failure::InsufficientQuota, detail)
            } else if matches!(status, 429 | 502 | 503 | 504) {
                (Failure::Transient, detail)
            } else if matches!(status, 400 | 422) {
                (
                    Failure::Refused,
                    format!("the provider refused the request: {detail}"),
                )
            } else {
                (Failure::Permanent, format!("provider error: {detail}"))
            }
        }
        OpenAIError::Reqwest(error) => {
            (Failure::Permanent, format!("provider unreachable: {error}"))
        }
        OpenAIError::JSONDeserialize(error, _) => (
            Failure::Permanent,
            format!("provider sent an unreadable answer: {error}"),
        ),
        other => (Failure::Permanent, format!("provider call failed: {other}")),
    }
}

/// The meaning of `error`, and its text for the caller with the key scrubbed out.
fn explain(error: OpenAIError, api_key: &SecretString) -> (Failure, String) {
    let (failure, detail) = classify(error);
    (failure, scrub_secret(&detail, api_key.expose_secret()))
}

/// A key too short to be real would scrub ordinary words.
fn scrub_secret(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_details() {
        assert_eq!(
            scrub_secret("bad key sk-secret-123 given", "sk-secret-123"),
            "bad key [redacted] given"
        );
    }
}
