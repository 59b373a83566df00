//! OpenAI's Chat Completions API, or any server that speaks it (Ollama, vLLM,
//! LM Studio, ...), through async-openai.

use std::sync::Arc;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatChoiceStream, ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionResponseStream, ChatCompletionStreamOptions, CompletionUsage,
    CreateChatCompletionRequest, CreateChatCompletionResponse,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};
use secrecy::{ExposeSecret, SecretString};

use super::{
    Completion, EventStream, Message, Provider, ProviderKind, Reply, Role, StreamEvent, Usage,
    counted_usage,
};
use crate::Settings;
use crate::error::LlmError;

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

    fn body(request: &Completion) -> CreateChatCompletionRequest {
        CreateChatCompletionRequest {
            model: request.model.clone(),
            messages: request.messages.iter().map(to_openai).collect(),
            max_completion_tokens: Some(request.max_tokens),
            ..CreateChatCompletionRequest::default()
        }
    }

    fn failure(&self, error: OpenAIError) -> LlmError {
        let (failure, detail) = classify(error);
        let detail = scrub_secret(&detail, self.api_key.expose_secret());
        match failure {
            Failure::Transient => LlmError::Transient(detail),
            Failure::InsufficientQuota => LlmError::InsufficientQuota(detail),
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
            let answer = self.client.chat().create(Self::body(request)).await;
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
            let mut body = Self::body(request);
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

/// Turns the provider's chunks into [`StreamEvent`]s. Dropping it drops the upstream
/// stream, which cancels the request.
struct Events {
    upstream: ChatCompletionResponseStream,
    request: Arc<Completion>,
    api_key: SecretString,
    /// The choices of the last chunk not passed on yet.
    pending: std::vec::IntoIter<ChatChoiceStream>,
    model: String,
    usage: Option<Usage>,
    /// Counted when the provider reports no usage.
    reply: String,
    ended: bool,
}

impl Events {
    fn new(
        upstream: ChatCompletionResponseStream,
        request: Arc<Completion>,
        api_key: SecretString,
    ) -> Self {
        Self {
            upstream,
            model: request.model.clone(),
            request,
            api_key,
            pending: Vec::new().into_iter(),
            usage: None,
            reply: String::new(),
            ended: false,
        }
    }

    fn into_stream(self) -> EventStream {
        stream::unfold(self, |mut events| async move {
            let event = events.next_event().await?;
            Some((event, events))
        })
        .boxed()
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        if self.ended {
            return None;
        }
        loop {
            let delta = (&mut self.pending)
                .filter_map(|choice| choice.delta.content)
                .find(|delta| !delta.is_empty());
            if let Some(delta) = delta {
                self.reply.push_str(&delta);
                return Some(Ok(StreamEvent::Delta(delta)));
            }
            match self.upstream.next().await {
                Some(Ok(chunk)) => {
                    if let Some(reported) = chunk.usage {
                        self.usage = Some(usage_of(reported));
                    }
                    self.pending = chunk.choices.into_iter();
                    if !chunk.model.is_empty() && chunk.model != self.model {
                        self.model = chunk.model;
                        return Some(Ok(StreamEvent::Model(self.model.clone())));
                    }
                }
                Some(Err(error)) => {
                    self.ended = true;
                    let (_, detail) = classify(error);
                    let detail = scrub_secret(&detail, self.api_key.expose_secret());
                    return Some(Err(LlmError::StreamBroken(detail)));
                }
                None => {
                    self.ended = true;
                    // Compatible servers that ignore `include_usage` report nothing:
                    // count it rather than charge nothing.
                    let usage = self
                        .usage
                        .unwrap_or_else(|| counted_usage(&self.request, &self.reply));
                    return Some(Ok(StreamEvent::Usage(usage)));
                }
            }
        }
    }
}

fn to_openai(message: &Message) -> ChatCompletionRequestMessage {
    let content = message.content.clone();
    match message.role {
        Role::System => ChatCompletionRequestSystemMessage::from(content).into(),
        Role::Assistant => ChatCompletionRequestAssistantMessage::from(content).into(),
        Role::User => ChatCompletionRequestUserMessage::from(content).into(),
    }
}

fn from_openai(answer: CreateChatCompletionResponse, request: &Completion) -> Reply {
    let text = answer
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content.or(choice.message.refusal))
        .unwrap_or_default();
    let usage = match answer.usage {
        Some(usage) => usage_of(usage),
        // Some compatible servers report no usage: count it ourselves rather than
        // charge nothing.
        None => counted_usage(request, &text),
    };
    Reply {
        text,
        usage,
        model: answer.model,
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
