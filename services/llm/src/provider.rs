use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionResponseStream, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionResponse,
};
use chat_common::tokens;
use chat_proto::llm_service_server::LlmService;
use chat_proto::{ChatMessage, CompleteChunk, CompleteRequest, CompleteResponse, Role, Usage};
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
    /// Pause between the mock's streamed words, so streaming is visible without a key.
    mock_chunk_delay: Duration,
}

/// The chunks of a streamed completion, as the gRPC response stream.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<CompleteChunk, Status>> + Send>>;

/// A call in progress: its span, and what to record when it ends.
struct Call {
    span: tracing::Span,
    requested_model: String,
    started: Instant,
}

impl Call {
    /// Records the outcome of the call on its span and in the metrics.
    fn finish(&self, outcome: &'static str, model: &str, usage: Option<Usage>) {
        histogram!("llm_request_duration_seconds", "model" => self.requested_model.clone(), "outcome" => outcome)
            .record(self.started.elapsed());
        if outcome != "ok" {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", outcome);
        }
        let Some(usage) = usage else {
            return;
        };
        self.span.record("gen_ai.response.model", model);
        self.span
            .record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        self.span
            .record("gen_ai.usage.output_tokens", usage.completion_tokens);
        counter!("llm_tokens_total", "model" => model.to_owned(), "kind" => "prompt")
            .increment(usage.prompt_tokens.max(0) as u64);
        counter!("llm_tokens_total", "model" => model.to_owned(), "kind" => "completion")
            .increment(usage.completion_tokens.max(0) as u64);
        tracing::info!(
            parent: &self.span,
            model,
            outcome,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "completion"
        );
    }
}

fn outcome_of(status: &Status) -> &'static str {
    match status.code() {
        Code::ResourceExhausted => "rate_limited",
        Code::FailedPrecondition => "insufficient_quota",
        Code::DeadlineExceeded => "timeout",
        _ => "error",
    }
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
            mock_chunk_delay: Duration::from_millis(settings.mock_chunk_delay_ms),
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

    fn openai_body(&self, request: &CompleteRequest) -> CreateChatCompletionRequest {
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: request.messages.iter().map(to_openai).collect(),
            max_completion_tokens: Some(self.max_tokens(request)),
            ..CreateChatCompletionRequest::default()
        }
    }

    /// Makes one provider call, retrying rate limits and overload with backoff while
    /// the deadline allows, and maps what it cannot retry to a status.
    async fn with_retries<T, Fut>(
        &self,
        api_key: &SecretString,
        deadline: Instant,
        attempt: impl Fn() -> Fut,
    ) -> Result<T, Status>
    where
        Fut: Future<Output = Result<T, OpenAIError>>,
    {
        let scrub = |text: String| scrub_secret(&text, api_key.expose_secret());
        let mut retries = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match tokio::time::timeout(left, attempt()).await {
                Ok(Ok(answer)) => return Ok(answer),
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

    /// The span and bookkeeping of one call.
    fn start_call(&self, request: &CompleteRequest, streamed: bool) -> Call {
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
            gen_ai.request.max_tokens = self.max_tokens(request),
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
            streamed,
            user_id = %request.user_id,
        );
        Call {
            span,
            requested_model: requested_model.to_owned(),
            started: Instant::now(),
        }
    }

    fn complete_mock(&self, request: &CompleteRequest) -> CompleteResponse {
        let reply = mock_reply(request);
        CompleteResponse {
            usage: Some(counted_usage(request, &reply)),
            reply,
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

    /// Streams a completion from the provider into `sender` until it ends, fails, or
    /// the caller goes away; then drops the upstream stream, which cancels the request.
    async fn relay_openai(
        call: Call,
        request: CompleteRequest,
        mut upstream: ChatCompletionResponseStream,
        sender: mpsc::Sender<Result<CompleteChunk, Status>>,
    ) {
        let mut reply = String::new();
        let mut usage = None;
        let mut model = call.requested_model.clone();
        loop {
            let next = tokio::select! {
                () = sender.closed() => {
                    counter!("llm_streams_cancelled_total").increment(1);
                    let counted = counted_usage(&request, &reply);
                    call.finish("cancelled", &model, Some(counted));
                    return;
                }
                next = upstream.next() => next,
            };
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    if !chunk.model.is_empty() {
                        model = chunk.model;
                    }
                    if let Some(reported) = chunk.usage {
                        usage = Some(Usage {
                            prompt_tokens: i64::from(reported.prompt_tokens),
                            completion_tokens: i64::from(reported.completion_tokens),
                            total_tokens: i64::from(reported.total_tokens),
                        });
                    }
                    for delta in chunk
                        .choices
                        .into_iter()
                        .filter_map(|choice| choice.delta.content)
                    {
                        if delta.is_empty() {
                            continue;
                        }
                        reply.push_str(&delta);
                        let sent = sender
                            .send(Ok(CompleteChunk {
                                delta,
                                ..CompleteChunk::default()
                            }))
                            .await;
                        if sent.is_err() {
                            counter!("llm_streams_cancelled_total").increment(1);
                            call.finish("cancelled", &model, Some(counted_usage(&request, &reply)));
                            return;
                        }
                    }
                }
                Some(Err(error)) => {
                    let detail = match classify(error) {
                        Failure::Transient(detail)
                        | Failure::InsufficientQuota(detail)
                        | Failure::Permanent(detail) => detail,
                    };
                    call.finish("error", &model, Some(counted_usage(&request, &reply)));
                    let _ = sender
                        .send(Err(Status::unavailable(format!(
                            "the provider's stream broke: {detail}"
                        ))))
                        .await;
                    return;
                }
            }
        }
        // Compatible servers that ignore `include_usage` report nothing: count it.
        let usage = usage.unwrap_or_else(|| counted_usage(&request, &reply));
        call.finish("ok", &model, Some(usage));
        let _ = sender
            .send(Ok(CompleteChunk {
                delta: String::new(),
                usage: Some(usage),
                model,
            }))
            .await;
    }

    /// The mock, streamed word by word.
    async fn relay_mock(
        call: Call,
        request: CompleteRequest,
        pause: Duration,
        sender: mpsc::Sender<Result<CompleteChunk, Status>>,
    ) {
        let reply = mock_reply(&request);
        for (index, word) in reply.split_inclusive(' ').enumerate() {
            if index > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let chunk = CompleteChunk {
                delta: word.to_owned(),
                ..CompleteChunk::default()
            };
            if sender.send(Ok(chunk)).await.is_err() {
                counter!("llm_streams_cancelled_total").increment(1);
                call.finish("cancelled", "mock", None);
                return;
            }
        }
        let usage = counted_usage(&request, &reply);
        call.finish("ok", "mock", Some(usage));
        let _ = sender
            .send(Ok(CompleteChunk {
                delta: String::new(),
                usage: Some(usage),
                model: "mock".to_owned(),
            }))
            .await;
    }
}

/// What a completion costs when the provider did not say: the prompt and the reply
/// counted with the tokenizer.
fn counted_usage(request: &CompleteRequest, reply: &str) -> Usage {
    let prompt_tokens = tokens::count_prompt(
        request
            .messages
            .iter()
            .map(|message| message.content.as_str()),
    ) as i64;
    let completion_tokens = tokens::count(reply) as i64;
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

/// The mock's deterministic answer: it says it is the mock, how much context it saw,
/// and what the user said.
fn mock_reply(request: &CompleteRequest) -> String {
    let said = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role() == Role::User)
        .map_or("", |message| message.content.as_str());
    let earlier = request.messages.len().saturating_sub(1);
    format!(
        "[mock] This is the built-in mock provider (no OPENAI_API_KEY is set), \
         with {earlier} earlier message(s) in context. You said: {said}"
    )
}

impl Llm {
    /// The deadline of a call: the caller's, less a margin, or the default.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let budget = chat_common::grpc::deadline_of(request)
            .unwrap_or(self.default_timeout)
            .saturating_sub(DEADLINE_MARGIN);
        Instant::now() + budget
    }
}

fn check(request: &CompleteRequest) -> Result<(), Status> {
    let ends_with_user = request
        .messages
        .last()
        .is_some_and(|message| message.role() == Role::User && !message.content.is_empty());
    if ends_with_user {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "messages must end with a non-empty user message",
        ))
    }
}

#[tonic::async_trait]
impl LlmService for Llm {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let deadline = self.deadline(&request);
        let request = request.into_inner();
        check(&request)?;
        let call = self.start_call(&request, false);
        let answer = match &self.provider {
            Provider::OpenAi { client, api_key } => {
                let body = self.openai_body(&request);
                self.with_retries(api_key, deadline, || {
                    let body = body.clone();
                    async move { client.chat().create(body).await }
                })
                .instrument(call.span.clone())
                .await
                .map(|answer| from_openai(answer, &request))
            }
            Provider::Mock => Ok(self.complete_mock(&request)),
        };
        match answer {
            Ok(answer) => {
                call.finish("ok", &answer.model, answer.usage);
                Ok(Response::new(answer))
            }
            Err(status) => {
                call.finish(outcome_of(&status), &call.requested_model, None);
                Err(status)
            }
        }
    }

    type CompleteStreamStream = ChunkStream;

    async fn complete_stream(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let deadline = self.deadline(&request);
        let request = request.into_inner();
        check(&request)?;
        let call = self.start_call(&request, true);
        let span = call.span.clone();
        let (sender, receiver) = mpsc::channel(32);
        match &self.provider {
            Provider::OpenAi { client, api_key } => {
                let mut body = self.openai_body(&request);
                body.stream = Some(true);
                body.stream_options = Some(ChatCompletionStreamOptions {
                    include_usage: Some(true),
                    ..ChatCompletionStreamOptions::default()
                });
                let opened = self
                    .with_retries(api_key, deadline, || {
                        let body = body.clone();
                        async move { client.chat().create_stream(body).await }
                    })
                    .instrument(span.clone())
                    .await;
                let upstream = match opened {
                    Ok(upstream) => upstream,
                    Err(status) => {
                        call.finish(outcome_of(&status), &call.requested_model, None);
                        return Err(status);
                    }
                };
                tokio::spawn(Self::relay_openai(call, request, upstream, sender).instrument(span));
            }
            Provider::Mock => {
                tokio::spawn(
                    Self::relay_mock(call, request, self.mock_chunk_delay, sender).instrument(span),
                );
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
        None => counted_usage(request, &reply),
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
