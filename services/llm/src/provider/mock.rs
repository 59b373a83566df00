//! The built-in mock, so the whole system runs, streams included, without a provider
//! account. Its answer is deterministic, which tests and the bench rely on.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, stream};

use super::{
    Completion, EventStream, Provider, ProviderKind, Reply, Role, StreamEvent, counted_usage,
};
use crate::Settings;
use crate::error::LlmError;

/// Stands for both the model asked for and the one answering.
const MODEL: &str = "mock";

pub struct Mock {
    /// Pause between streamed words, so streaming is visible without a key.
    chunk_delay: Duration,
}

impl Mock {
    pub fn new(settings: &Settings) -> Self {
        tracing::warn!("llm provider: built-in mock (set OPENAI_API_KEY to use a real model)");
        Self {
            chunk_delay: Duration::from_millis(settings.mock_chunk_delay_ms),
        }
    }
}

impl Provider for Mock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    fn model(&self) -> &str {
        MODEL
    }

    fn complete<'a>(&'a self, request: &'a Completion) -> BoxFuture<'a, Result<Reply, LlmError>> {
        let text = reply_to(request);
        let answer = Reply {
            usage: counted_usage(request, &text),
            text,
            model: MODEL.to_owned(),
            tool_calls: Vec::new(),
            finish_reason: "stop".to_owned(),
        };
        std::future::ready(Ok(answer)).boxed()
    }

    /// The reply, word by word.
    fn complete_stream<'a>(
        &'a self,
        request: &'a Arc<Completion>,
    ) -> BoxFuture<'a, Result<EventStream, LlmError>> {
        let text = reply_to(request);
        let usage = counted_usage(request, &text);
        let pause = self.chunk_delay;
        let words: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let deltas =
            stream::iter(words.into_iter().enumerate()).then(move |(index, word)| async move {
                if index > 0 && !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                Ok(StreamEvent::Delta(word))
            });
        let end = [
            Ok(StreamEvent::Finish("stop".to_owned())),
            Ok(StreamEvent::Usage(usage)),
        ];
        let events = deltas.chain(stream::iter(end));
        std::future::ready(Ok(events.boxed())).boxed()
    }

    /// The mock spends nothing, so a stream cut short costs nothing.
    fn bills_cut_short_streams(&self) -> bool {
        false
    }
}

/// It says it is the mock, how much context it saw, and what the user said.
fn reply_to(request: &Completion) -> String {
    let said = request
        .messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User)
        .map_or("", |message| message.content.as_str());
    let earlier = request.messages.len().saturating_sub(1);
    format!(
        "[mock] This is the built-in mock provider (no OPENAI_API_KEY is set), \
         with {earlier} earlier message(s) in context. You said: {said}"
    )
}
