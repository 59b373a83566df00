//! Between the gRPC types and the provider's: a request's messages and JSON options in,
//! a reply, a streamed tool call and a usage out.

use chat_proto::CompleteResponse;

use crate::error::LlmError;
use crate::provider::{Message, Reply, Role, ToolCall, ToolCallDelta, Usage};

/// A JSON option as the gateway passed it on; empty is unset.
pub(super) fn json_field(name: &str, text: &str) -> Result<Option<serde_json::Value>, LlmError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|error| LlmError::InvalidRequest(format!("{name} is not valid JSON: {error}")))
}

pub(super) fn message_of(message: chat_proto::ChatMessage) -> Message {
    let role = match message.role() {
        chat_proto::Role::System => Role::System,
        chat_proto::Role::Assistant => Role::Assistant,
        chat_proto::Role::Tool => Role::Tool,
        chat_proto::Role::User | chat_proto::Role::Unspecified => Role::User,
    };
    let tool_calls = message
        .tool_calls
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
        })
        .collect();
    Message {
        role,
        content: message.content,
        tool_calls,
        tool_call_id: message.tool_call_id,
        name: message.name,
    }
}

pub(super) fn response_of(reply: Reply) -> CompleteResponse {
    let tool_calls = reply
        .tool_calls
        .into_iter()
        .map(|call| chat_proto::ToolCall {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
        })
        .collect();
    CompleteResponse {
        reply: reply.text,
        usage: Some(proto_usage(reply.usage)),
        model: reply.model,
        tool_calls,
        finish_reason: reply.finish_reason,
    }
}

pub(super) fn proto_tool_call_delta(call: ToolCallDelta) -> chat_proto::ToolCallDelta {
    chat_proto::ToolCallDelta {
        index: call.index,
        id: call.id,
        name: call.name,
        arguments: call.arguments,
    }
}

pub(super) fn proto_usage(usage: Usage) -> chat_proto::Usage {
    let wide = |tokens: u64| i64::try_from(tokens).unwrap_or(i64::MAX);
    chat_proto::Usage {
        prompt_tokens: wide(usage.prompt_tokens),
        completion_tokens: wide(usage.completion_tokens),
        total_tokens: wide(usage.total_tokens),
    }
}
