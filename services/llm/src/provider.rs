use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequest, CreateChatCompletionResponse,
};
use chat_common::tokens;
use chat_proto::llm_service_server::LlmService;
use chat_proto::{ChatMessage, CompleteRequest, CompleteResponse, Role, Usage};
use metrics::{counter, histogram};
use secrecy::{ExposeSecret, SecretString};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::Settings;

/// Kept back from the caller's deadline so our own, explanatory status reaches it
/// before its timer fires.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    Mock,
}

/// The gRPC service.
pub struct Llm {
    provider: Provider,
    model: String,
    max_output_tokens: u32,
    default_timeout: Duration,
    max_retries: u32,
    retry_base: Duration,
}

enum Provider {
    OpenAi {
        client: Box<Client<OpenAIConfig>>,
        /// Kept to scrub it from any error text we pass on.
        api_key: SecretString,
    },
    Mock,
}

/// How a failed provider call is answered.
enum Failure {
    /// Worth retrying after a pause: rate limited or overloaded.
    Transient(String),
    /// The account has no credit.
    InsufficientQuota(String),
    Permanent(String),
}

impl Llm {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let key = settings
            .openai_api_key
            .clone()
            .filter(|key| !key.expose_secret().trim().is_empty());
        let provider = match (settings.llm_provider.as_str(), key) {
            ("mock", _) | ("auto", None) => Provider::Mock,
            ("openai" | "auto", Some(api_key)) => {
                let config = OpenAIConfig::new()
                    .with_api_key(api_key.expose_secret())
                    .with_api_base(settings.openai_base_url.trim_end_matches('/'));
                // Our own retry loop knows the caller's deadline; the client's built-in
                // retries (three, on 429 and 5xx) would multiply it and ignore the deadline.
                let transport = ReqwestService::new(reqwest::Client::new());
                Provider::OpenAi {
                    client: Box::new(Client::with_config(config).with_http_service(transport)),
                    api_key,
                }
            }
            ("openai", None) => {
                anyhow::bail!("LLM_PROVIDER is openai but OPENAI_API_KEY is not set")
            }
            (other, _) => anyhow::bail!("LLM_PROVIDER must be auto, openai or mock, not {other:?}"),
        };
        let llm = Self {
            provider,
            model: settings.openai_model.clone(),
            max_output_tokens: settings.max_output_tokens,
            default_timeout: settings.default_timeout(),
            max_retries: settings.llm_max_retries,
            retry_base: Duration::from_millis(settings.llm_retry_base_ms),
        };
        match llm.kind() {
            ProviderKind::OpenAi => tracing::info!(
                base_url = %settings.openai_base_url,
                model = %llm.model,
                "llm provider: openai-compatible"
            ),
            ProviderKind::Mock => tracing::warn!(
                "llm provider: built-in mock (set OPENAI_API_KEY to use a real model)"
            ),
        }
        Ok(llm)
    }

    pub fn kind(&self) -> ProviderKind {
        match self.provider {
            Provider::OpenAi { .. } => ProviderKind::OpenAi,
            Provider::Mock => ProviderKind::Mock,
        }
    }

    async fn complete_openai(
        &self,
        client: &Client<OpenAIConfig>,
        api_key: &SecretString,
        request: &CompleteRequest,
        deadline: Instant,
    ) -> Result<CompleteResponse, Status> {
        let body = CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: request.messages.iter().map(to_openai).collect(),
            max_completion_tokens: Some(self.max_tokens(request)),
            ..CreateChatCompletionRequest::default()
        };
        let scrub = |text: String| scrub_secret(&text, api_key.expose_secret());
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match tokio::time::timeout(left, client.chat().create(body.clone())).await
            {
                Ok(Ok(answer)) => return Ok(from_openai(answer, request)),
                Ok(Err(error)) => classify(error),
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the provider did not answer before the deadline",
                    ));
                }
            };
            match failure {
                Failure::Transient(detail) if retries < self.max_retries => {
                    let pause = backoff(self.retry_base, retries);
                    if Instant::now() + pause >= deadline {
                        return Err(Status::resource_exhausted(scrub(format!(
                            "provider rate limited; no time left to retry: {detail}"
                        ))));
                    }
                    tracing::info!(retries, pause_ms = pause.as_millis() as u64, %detail, "provider rate limited; retrying");
                    counter!("llm_retries_total", "model" => self.model.clone()).increment(1);
                    tokio::time::sleep(pause).await;
                    retries += 1;
                }
                Failure::Transient(detail) => {
                    return Err(Status::resource_exhausted(scrub(format!(
                        "provider still rate limited after {retries} retries: {detail}"
                    ))));
                }
                Failure::InsufficientQuota(detail) => {
                    return Err(Status::failed_precondition(scrub(format!(
                        "insufficient_quota: {detail}"
                    ))));
                }
                Failure::Permanent(detail) => return Err(Status::internal(scrub(detail))),
            }
        }
    }

    fn complete_mock(&self, request: &CompleteRequest) -> CompleteResponse {
        let said = request
            .messages
            .iter()
            .rev()
            .find(|message| message.role() == Role::User)
            .map_or("", |message| message.content.as_str());
        let earlier = request.messages.len().saturating_sub(1);
        let reply = format!(
            "[mock] This is the built-in mock provider (no OPENAI_API_KEY is set), \
             with {earlier} earlier message(s) in context. You said: {said}"
        );
        let prompt_tokens = tokens::count_prompt(
            request
                .messages
                .iter()
                .map(|message| message.content.as_str()),
        ) as i64;
        let completion_tokens = tokens::count(&reply) as i64;
        CompleteResponse {
            reply,
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            }),
            model: "mock".to_owned(),
        }
    }

    fn max_tokens(&self, request: &CompleteRequest) -> u32 {
        if request.max_tokens == 0 {
            self.max_output_tokens
        } else {
            request.max_tokens
        }
    }
}

#[tonic::async_trait]
impl LlmService for Llm {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let budget = chat_common::grpc::deadline_of(&request)
            .unwrap_or(self.default_timeout)
            .saturating_sub(DEADLINE_MARGIN);
        let deadline = Instant::now() + budget;
        let request = request.into_inner();
        let ends_with_user = request
            .messages
            .last()
            .is_some_and(|message| message.role() == Role::User && !message.content.is_empty());
        if !ends_with_user {
            return Err(Status::invalid_argument(
                "messages must end with a non-empty user message",
            ));
        }
        let (system, requested_model) = match self.provider {
            Provider::OpenAi { .. } => ("openai", self.model.as_str()),
            Provider::Mock => ("mock", "mock"),
        };
        let span = tracing::info_span!(
            "llm call",
            otel.name = format!("chat {requested_model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.system = system,
            gen_ai.provider.name = system,
            gen_ai.operation.name = "chat",
            gen_ai.request.model = requested_model,
            gen_ai.request.max_tokens = self.max_tokens(&request),
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
        );
        let started = Instant::now();
        let answer = match &self.provider {
            Provider::OpenAi { client, api_key } => {
                self.complete_openai(client, api_key, &request, deadline)
                    .instrument(span.clone())
                    .await
            }
            Provider::Mock => Ok(self.complete_mock(&request)),
        };
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(status) => match status.code() {
                Code::ResourceExhausted => "rate_limited",
                Code::FailedPrecondition => "insufficient_quota",
                Code::DeadlineExceeded => "timeout",
                _ => "error",
            },
        };
        histogram!("llm_request_duration_seconds", "model" => requested_model.to_owned(), "outcome" => outcome)
            .record(started.elapsed());
        let answer = answer.inspect_err(|_| {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", outcome);
        })?;
        let usage = answer.usage.unwrap_or_default();
        span.record("gen_ai.response.model", answer.model.as_str());
        span.record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", usage.completion_tokens);
        let model = answer.model.clone();
        counter!("llm_tokens_total", "model" => model.clone(), "kind" => "prompt")
            .increment(usage.prompt_tokens.max(0) as u64);
        counter!("llm_tokens_total", "model" => model, "kind" => "completion")
            .increment(usage.completion_tokens.max(0) as u64);
        tracing::info!(
            user_id = %request.user_id,
            model = %answer.model,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "completion"
        );
        Ok(Response::new(answer))
    }
}

fn to_openai(message: &ChatMessage) -> ChatCompletionRequestMessage {
    let content = message.content.clone();
    match message.role() {
        Role::System => ChatCompletionRequestSystemMessage::from(content).into(),
        Role::Assistant => ChatCompletionRequestAssistantMessage::from(content).into(),
        Role::User | Role::Unspecified => ChatCompletionRequestUserMessage::from(content).into(),
    }
}

fn from_openai(
    answer: CreateChatCompletionResponse,
    request: &CompleteRequest,
) -> CompleteResponse {
    let reply = answer
        .choices
        .into_iter()
        .next()
        .and_then(|choice| choice.message.content.or(choice.message.refusal))
        .unwrap_or_default();
    let usage = match answer.usage {
        Some(usage) => Usage {
            prompt_tokens: i64::from(usage.prompt_tokens),
            completion_tokens: i64::from(usage.completion_tokens),
            total_tokens: i64::from(usage.total_tokens),
        },
        // Some compatible servers report no usage: count it ourselves rather than
        // charge nothing.
        None => {
            let prompt_tokens = tokens::count_prompt(
                request
                    .messages
                    .iter()
                    .map(|message| message.content.as_str()),
            ) as i64;
            let completion_tokens = tokens::count(&reply) as i64;
            Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            }
        }
    };
    CompleteResponse {
        reply,
        usage: Some(usage),
        model: answer.model,
    }
}

fn classify(error: OpenAIError) -> Failure {
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
                Failure::InsufficientQuota(detail)
            } else if matches!(status, 429 | 502 | 503 | 504) {
                Failure::Transient(detail)
            } else {
                Failure::Permanent(format!("provider error: {detail}"))
            }
        }
        OpenAIError::Reqwest(error) => Failure::Permanent(format!("provider unreachable: {error}")),
        OpenAIError::JSONDeserialize(error, _) => {
            Failure::Permanent(format!("provider sent an unreadable answer: {error}"))
        }
        other => Failure::Permanent(format!("provider call failed: {other}")),
    }
}

/// Exponential backoff with "equal jitter": half fixed, half random, so retries of
/// many callers spread out without ever waiting less than half the step.
fn backoff(base: Duration, retry: u32) -> Duration {
    let step = base.saturating_mul(1 << retry.min(10));
    let half = step / 2;
    half + half.mul_f64(fastrand::f64())
}

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
    fn backoff_grows_and_stays_within_its_step() {
        let base = Duration::from_millis(100);
        for retry in 0..5 {
            let step = base * (1 << retry);
            for _ in 0..20 {
                let pause = backoff(base, retry);
                assert!(
                    pause >= step / 2 && pause <= step,
                    "{pause:?} for retry {retry}"
                );
            }
        }
    }

    #[test]
    fn secrets_are_scrubbed_from_details() {
        assert_eq!(
            scrub_secret("bad key sk-secret-123 given", "sk-secret-123"),
            "bad key [redacted] given"
        );
    }
}
