//! The gRPC edge: reads the caller's deadline, checks the request, runs the provider
//! under the retry policy inside a span, and turns an [`LlmError`] into a status here
//! and nowhere else. A stream is relayed by its own task, which notices when the caller
//! goes away and drops the provider's stream, cancelling the upstream request. The
//! mapping between the gRPC types and the provider's is in `convert`.

mod convert;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::llm_service_server::LlmService;
use chat_proto::{CompleteChunk, CompleteRequest, CompleteResponse};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing::field::Empty;

use crate::Settings;
use crate::error::LlmError;
use crate::metrics::{self, Outcome};
use crate::provider::{
    self, Completion, EventStream, Options, Provider, ProviderKind, StreamEvent, Usage,
    counted_usage,
};
use crate::retry::RetryPolicy;
use convert::{json_field, message_of, proto_tool_call_delta, proto_usage, response_of};

/// Kept back from the caller's deadline so our own, explanatory status reaches it
/// before its timer fires.
const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// The chunks of a streamed completion, as the gRPC response stream.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<CompleteChunk, Status>> + Send>>;

/// The gRPC service.
pub struct Llm {
    provider: Box<dyn Provider>,
    retry: RetryPolicy,
    /// Completion cap when the caller sets none.
    max_output_tokens: u32,
    /// Deadline when the caller sets none.
    default_timeout: Duration,
}

impl Llm {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            provider: provider::from_settings(settings)?,
            retry: RetryPolicy::new(settings),
            max_output_tokens: settings.max_output_tokens,
            default_timeout: settings.default_timeout(),
        })
    }

    pub fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }

    /// The deadline of a call: the caller's, less a margin, or the default.
    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        let budget = chat_common::grpc::deadline_of(request)
            .unwrap_or(self.default_timeout)
            .saturating_sub(DEADLINE_MARGIN);
        Instant::now() + budget
    }

    fn completion(&self, request: CompleteRequest) -> Result<Completion, LlmError> {
        let has_text = request
            .messages
            .iter()
            .any(|message| !message.content.is_empty() || !message.tool_calls.is_empty());
        if !has_text {
            return Err(LlmError::BadRequest("messages must not be empty"));
        }
        let max_tokens = match request.max_tokens {
            0 => self.max_output_tokens,
            asked => asked,
        };
        let model = match request.model.trim() {
            "" => self.provider.model().to_owned(),
            asked => asked.to_owned(),
        };
        let options = Options {
            temperature: request.temperature,
            top_p: request.top_p,
            stop: request.stop,
            seed: request.seed,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            parallel_tool_calls: request.parallel_tool_calls,
            end_user: request.end_user,
            response_format: json_field("response_format", &request.response_format_json)?,
            tools: json_field("tools", &request.tools_json)?,
            tool_choice: json_field("tool_choice", &request.tool_choice_json)?,
        };
        let messages = request.messages.into_iter().map(message_of).collect();
        Ok(Completion {
            model,
            messages,
            max_tokens,
            options,
        })
    }

    /// The span and bookkeeping of one call.
    fn start_call(&self, completion: &Completion, user_id: &str, streamed: bool) -> Call {
        let system = self.provider.kind().system();
        let model = completion.model.as_str();
        let span = tracing::info_span!(
            "llm call",
            otel.name = format!("chat {model}"),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.system = system,
            gen_ai.provider.name = system,
            gen_ai.operation.name = "chat",
            gen_ai.request.model = model,
            gen_ai.request.max_tokens = completion.max_tokens,
            gen_ai.response.model = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.type = Empty,
            streamed,
            user_id = %user_id,
        );
        Call {
            span,
            requested_model: model.to_owned(),
            started: Instant::now(),
        }
    }

    async fn answer(
        &self,
        deadline: Instant,
        request: CompleteRequest,
    ) -> Result<CompleteResponse, LlmError> {
        let user_id = request.user_id.clone();
        let completion = self.completion(request)?;
        let call = self.start_call(&completion, &user_id, false);
        let answer = self
            .retry
            .run(deadline, &completion.model, || {
                self.provider.complete(&completion)
            })
            .instrument(call.span.clone())
            .await;
        match answer {
            Ok(reply) => {
                call.finish(Outcome::Ok, &reply.model, Some(reply.usage));
                Ok(response_of(reply))
            }
            Err(error) => {
                call.finish(Outcome::from(&error), &completion.model, None);
                Err(error)
            }
        }
    }

    async fn open_stream(
        &self,
        deadline: Instant,
        request: CompleteRequest,
    ) -> Result<ChunkStream, LlmError> {
        let user_id = request.user_id.clone();
        let completion = Arc::new(self.completion(request)?);
        let call = self.start_call(&completion, &user_id, true);
        let span = call.span.clone();
        let opened = self
            .retry
            .run(deadline, &completion.model, || {
                self.provider.complete_stream(&completion)
            })
            .instrument(span.clone())
            .await;
        let events = match opened {
            Ok(events) => events,
            Err(error) => {
                call.finish(Outcome::from(&error), &completion.model, None);
                return Err(error);
            }
        };
        let (sender, receiver) = mpsc::channel(32);
        let relay = Relay {
            call,
            bills_cut_short: self.provider.bills_cut_short_streams(),
            request: completion,
            sender,
        };
        tokio::spawn(relay.run(events).instrument(span));
        Ok(Box::pin(ReceiverStream::new(receiver)))
    }
}

#[tonic::async_trait]
impl LlmService for Llm {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteResponse>, Status> {
        let deadline = self.deadline(&request);
        let answer = self.answer(deadline, request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    type CompleteStreamStream = ChunkStream;

    async fn complete_stream(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let deadline = self.deadline(&request);
        let chunks = self.open_stream(deadline, request.into_inner()).await?;
        Ok(Response::new(chunks))
    }
}

/// A call in progress: its span, and what to record when it ends.
struct Call {
    span: tracing::Span,
    requested_model: String,
    started: Instant,
}

impl Call {
    /// `model` is the one that answered; `usage` is what the call cost, if anything.
    fn finish(&self, outcome: Outcome, model: &str, usage: Option<Usage>) {
        metrics::call_finished(&self.requested_model, outcome, self.started.elapsed());
        if outcome != Outcome::Ok {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.type", outcome.label());
        }
        let Some(usage) = usage else {
            return;
        };
        self.span.record("gen_ai.response.model", model);
        self.span
            .record("gen_ai.usage.input_tokens", usage.prompt_tokens);
        self.span
            .record("gen_ai.usage.output_tokens", usage.completion_tokens);
        metrics::tokens_used(model, usage);
        tracing::info!(
            parent: &self.span,
            model,
            outcome = outcome.label(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "completion"
        );
    }
}

/// Passes a provider's stream on to the caller until it ends, fails, or the caller
/// goes away; then drops the provider's stream, which cancels the upstream request.
struct Relay {
    call: Call,
    request: Arc<Completion>,
    bills_cut_short: bool,
    sender: mpsc::Sender<Result<CompleteChunk, Status>>,
}

impl Relay {
    async fn run(self, mut events: EventStream) {
        let mut reply = String::new();
        let mut model = self.request.model.clone();
        loop {
            let next = tokio::select! {
                () = self.sender.closed() => return self.cut_short(&model, &reply),
                next = events.next() => next,
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(error)) => return self.fail(error, &model, &reply).await,
                None => {
                    let error = LlmError::StreamBroken("it ended without its usage".to_owned());
                    return self.fail(error, &model, &reply).await;
                }
            };
            let chunk = match event {
                StreamEvent::Delta(delta) => {
                    reply.push_str(&delta);
                    CompleteChunk {
                        delta,
                        ..CompleteChunk::default()
                    }
                }
                StreamEvent::ToolCall(call) => {
                    reply.push_str(&call.arguments);
                    CompleteChunk {
                        tool_calls: vec![proto_tool_call_delta(call)],
                        ..CompleteChunk::default()
                    }
                }
                StreamEvent::Finish(finish_reason) => CompleteChunk {
                    finish_reason,
                    ..CompleteChunk::default()
                },
                StreamEvent::Model(name) => {
                    model = name;
                    continue;
                }
                StreamEvent::Usage(usage) => return self.finish(usage, model).await,
            };
            if self.sender.send(Ok(chunk)).await.is_err() {
                return self.cut_short(&model, &reply);
            }
        }
    }

    async fn finish(self, usage: Usage, model: String) {
        self.call.finish(Outcome::Ok, &model, Some(usage));
        let last = CompleteChunk {
            usage: Some(proto_usage(usage)),
            model,
            ..CompleteChunk::default()
        };
        let _ = self.sender.send(Ok(last)).await;
    }

    async fn fail(self, error: LlmError, model: &str, reply: &str) {
        self.call
            .finish(Outcome::from(&error), model, self.billed(reply));
        let _ = self.sender.send(Err(error.into())).await;
    }

    fn cut_short(&self, model: &str, reply: &str) {
        metrics::stream_cancelled();
        self.call
            .finish(Outcome::Cancelled, model, self.billed(reply));
    }

    /// What the reply so far cost, for a stream that did not get to its usage.
    fn billed(&self, reply: &str) -> Option<Usage> {
        self.bills_cut_short
            .then(|| counted_usage(&self.request, reply))
    }
}
