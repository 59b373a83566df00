//! The chat path of one `/v1` completion, the same steps as `/chat` without the
//! gateway's own context (the client sends the whole conversation):
//!
//! ```text
//! filter (every user message, at once) → token (reserve: the prompt + the output cap)
//! → llm → token (settle to the provider's usage) ‖ history (save the exchange)
//! ```
//!
//! The filter checks the text of every user message, not only the last: the client
//! sends the whole conversation each time, and an earlier "user" turn is as much the
//! user's text as the new one. The model gets the messages as sent (the filter's
//! cleaning, which collapses whitespace, would mangle code); a blocked message is 400
//! `content_filter` naming it. System, assistant and tool messages are the client's
//! program's, not the user's, and are not filtered.

use chat_common::tokens;
use chat_proto::{ChatMessage, CompleteRequest, NewMessage, Role, SaveRequest};
use futures::future::try_join_all;
use tonic::Code;

use super::error::V1Error;
use super::request::Completion;
use crate::auth::Caller;
use crate::chat::{Charge, Estimate, Policy, Reservation};
use crate::{ApiError, Backends};

/// A completion that passed the filter and holds its reservation until it is closed.
pub struct Exchange {
    backends: Backends,
    user_id: String,
    /// The prompt's size by our tokenizer, for charging a stream that broke.
    pub prompt_tokens: i64,
    reservation: Reservation,
    /// What history keeps of the user's side: the trailing user message's text.
    said: Option<String>,
    /// `SaveRequest.conversation_key`: `X-Conversation-Id`, or Open WebUI's chat id.
    conversation_key: String,
}

/// What the model wrote, for history.
#[derive(Debug, Default)]
pub struct Written {
    pub text: String,
    /// (name, arguments) of each tool call.
    pub tool_calls: Vec<(String, String)>,
}

impl Written {
    /// The reply as history keeps it: the text, then each tool call as a line of text.
    fn as_history(&self) -> String {
        let calls = self
            .tool_calls
            .iter()
            .map(|(name, arguments)| format!("[tool call] {name}({arguments})"));
        std::iter::once(self.text.clone())
            .filter(|text| !text.is_empty())
            .chain(calls)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Filters the user's messages, then reserves the prompt's cost plus the output cap.
/// `max_tokens` is the cap already applied.
pub async fn open(
    backends: &Backends,
    policy: &Policy,
    caller: &Caller,
    completion: &Completion,
    max_tokens: u32,
    conversation_key: String,
) -> Result<Exchange, V1Error> {
    let user_texts = completion
        .messages
        .iter()
        .enumerate()
        .filter(|(_, message)| message.role() == Role::User && !message.content.trim().is_empty());
    let verdicts = user_texts.map(|(index, message)| async move {
        let verdict =
            backends
                .filter(message.content.clone())
                .await
                .map_err(|status| match status.code() {
                    Code::InvalidArgument => V1Error::invalid(
                        Some(&format!("messages[{index}].content")),
                        status.message().to_owned(),
                    ),
                    _ => V1Error::from(ApiError::dependency("filter", status)),
                })?;
        if verdict.blocked {
            return Err(V1Error::blocked(index, &verdict.reason));
        }
        Ok(())
    });
    try_join_all(verdicts).await?;

    let prompt_tokens = prompt_tokens(&completion.messages, &completion.tools);
    let estimate = Estimate {
        model: completion.model.clone(),
        prompt_tokens,
        output_tokens: i64::from(max_tokens),
        floor: policy.min_reservation,
    };
    let reservation = Reservation::take(backends, caller, &estimate).await?;
    let said = completion
        .messages
        .last()
        .filter(|message| message.role() == Role::User)
        .map(|message| message.content.clone());
    Ok(Exchange {
        backends: backends.clone(),
        user_id: caller.user_id.clone(),
        prompt_tokens,
        reservation,
        said,
        conversation_key,
    })
}

/// The prompt's tokens: every message with its overhead, tool calls and the tools'
/// definitions, which the provider counts too.
fn prompt_tokens(messages: &[ChatMessage], tools: &str) -> i64 {
    let contents = messages.iter().map(|message| message.content.as_str());
    let calls: usize = messages
        .iter()
        .flat_map(|message| &message.tool_calls)
        .map(|call| tokens::count(&call.name) + tokens::count(&call.arguments))
        .sum();
    (tokens::count_prompt(contents) + calls + tokens::count(tools)) as i64
}

/// The llm service's request: the client's conversation and options, the model chosen.
pub fn llm_request(
    caller: &Caller,
    completion: &Completion,
    model: &str,
    max_tokens: u32,
) -> CompleteRequest {
    CompleteRequest {
        messages: completion.messages.clone(),
        max_tokens,
        user_id: caller.user_id.clone(),
        model: model.to_owned(),
        temperature: completion.temperature,
        top_p: completion.top_p,
        stop: completion.stop.clone(),
        seed: completion.seed,
        presence_penalty: completion.presence_penalty,
        frequency_penalty: completion.frequency_penalty,
        parallel_tool_calls: completion.parallel_tool_calls,
        end_user: completion.user.clone().unwrap_or_default(),
        response_format_json: completion.response_format.clone(),
        tools_json: completion.tools.clone(),
        tool_choice_json: completion.tool_choice.clone(),
    }
}

/// What closing an exchange reports.
pub struct Closed {
    /// The conversation the exchange was saved in; `None` when saving failed.
    pub conversation_id: Option<String>,
}

impl Exchange {
    /// The model was never reached, or failed before writing anything: a full refund.
    pub async fn abandon(self) {
        self.reservation.refund().await;
    }

    /// Charges `charge` and saves the exchange, at the same time.
    pub async fn close(self, charge: Charge, written: &Written, incomplete: bool) -> Closed {
        let Self {
            backends,
            user_id,
            reservation,
            said,
            conversation_key,
            ..
        } = self;
        let mut messages = Vec::new();
        if let Some(said) = said {
            messages.push(NewMessage {
                role: Role::User.into(),
                text: said,
                incomplete: false,
            });
        }
        let reply = written.as_history();
        if !reply.is_empty() || incomplete {
            messages.push(NewMessage {
                role: Role::Assistant.into(),
                text: reply,
                incomplete,
            });
        }
        let save = SaveRequest {
            user_id: user_id.clone(),
            messages,
            conversation_key,
            ..SaveRequest::default()
        };
        let (_, conversation_id) =
            tokio::join!(reservation.settle(charge), save_exchange(&backends, save));
        Closed { conversation_id }
    }
}

/// Saves the exchange (see [`Backends::save_turn`]). Nothing to save is no call.
async fn save_exchange(backends: &Backends, save: SaveRequest) -> Option<String> {
    if save.messages.is_empty() {
        return None;
    }
    // Queued while MySQL is away, a save by key does not know its conversation yet.
    let saved = backends.save_turn(save, false).await?;
    Some(saved.conversation_id).filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_tool_calls_as_text() {
        let written = Written {
            text: "Let me look.".into(),
            tool_calls: vec![("get_weather".into(), r#"{"city":"Paris"}"#.into())],
        };
        assert_eq!(
            written.as_history(),
            "Let me look.\n[tool call] get_weather({\"city\":\"Paris\"})"
        );
        assert_eq!(Written::default().as_history(), "");
    }
}
