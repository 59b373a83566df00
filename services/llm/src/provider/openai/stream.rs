//! A streamed answer: the provider's chunks turned into [`StreamEvent`]s, ending with
//! the usage the provider reported, or counted when it reported none.

use std::collections::VecDeque;
use std::sync::Arc;

use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatChoiceStream, ChatCompletionResponseStream, CreateChatCompletionStreamResponse,
};
use futures::{StreamExt, stream};
use secrecy::SecretString;

use super::{explain, finish_name, usage_of};
use crate::error::LlmError;
use crate::provider::{Completion, EventStream, StreamEvent, ToolCallDelta, Usage, counted_usage};

/// Turns the provider's chunks into [`StreamEvent`]s. Dropping it drops the upstream
/// stream, which cancels the request.
pub(super) struct Events {
    upstream: ChatCompletionResponseStream,
    request: Arc<Completion>,
    api_key: SecretString,
    /// What the last chunk said that is not passed on yet.
    pending: VecDeque<StreamEvent>,
    model: String,
    usage: Option<Usage>,
    /// Counted when the provider reports no usage.
    reply: String,
    ended: bool,
}

impl Events {
    pub(super) fn new(
        upstream: ChatCompletionResponseStream,
        request: Arc<Completion>,
        api_key: SecretString,
    ) -> Self {
        Self {
            upstream,
            model: request.model.clone(),
            request,
            api_key,
            pending: VecDeque::new(),
            usage: None,
            reply: String::new(),
            ended: false,
        }
    }

    pub(super) fn into_stream(self) -> EventStream {
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
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.upstream.next().await {
                Some(Ok(chunk)) => {
                    if let Some(renamed) = self.take_chunk(chunk) {
                        return Some(Ok(renamed));
                    }
                }
                Some(Err(error)) => {
                    self.ended = true;
                    return Some(Err(self.broken(error)));
                }
                None => {
                    self.ended = true;
                    return Some(Ok(StreamEvent::Usage(self.final_usage())));
                }
            }
        }
    }

    /// Queues what one chunk says; answers the model's new name when the chunk changes it.
    fn take_chunk(&mut self, chunk: CreateChatCompletionStreamResponse) -> Option<StreamEvent> {
        if let Some(reported) = chunk.usage {
            self.usage = Some(usage_of(reported));
        }
        // One choice: the gateway never asks for more (`n` is 1).
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            self.take_choice(choice);
        }
        if !chunk.model.is_empty() && chunk.model != self.model {
            self.model = chunk.model;
            return Some(StreamEvent::Model(self.model.clone()));
        }
        None
    }

    /// Queues a choice's text, tool call pieces and finish reason.
    fn take_choice(&mut self, choice: ChatChoiceStream) {
        let delta = choice.delta;
        if let Some(text) = delta.content.or(delta.refusal)
            && !text.is_empty()
        {
            self.reply.push_str(&text);
            self.pending.push_back(StreamEvent::Delta(text));
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let function = call.function.unwrap_or_default();
            let arguments = function.arguments.unwrap_or_default();
            // Counted with the reply should the provider report no usage.
            self.reply.push_str(&arguments);
            self.pending.push_back(StreamEvent::ToolCall(ToolCallDelta {
                index: call.index,
                id: call.id.unwrap_or_default(),
                name: function.name.unwrap_or_default(),
                arguments,
            }));
        }
        if let Some(reason) = choice.finish_reason {
            self.pending
                .push_back(StreamEvent::Finish(finish_name(reason).to_owned()));
        }
    }

    fn broken(&self, error: OpenAIError) -> LlmError {
        let (_, detail) = explain(error, &self.api_key);
        LlmError::StreamBroken(detail)
    }

    /// What the stream cost: as reported, or, from compatible servers that ignore
    /// `include_usage` and report nothing, counted rather than charged as nothing.
    fn final_usage(&self) -> Usage {
        self.usage
            .unwrap_or_else(|| counted_usage(&self.request, &self.reply))
    }
}
