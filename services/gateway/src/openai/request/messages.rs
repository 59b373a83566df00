//! `messages`: each message's role, content, name, tool calls and tool call id,
//! checked and turned into the llm service's [`ChatMessage`]s.

use chat_proto::{ChatMessage, Role, ToolCall};
use serde_json::{Map, Value};

use super::V1Error;

/// The conversation so far: a non-empty array of messages.
pub(super) fn messages(fields: &Map<String, Value>) -> Result<Vec<ChatMessage>, V1Error> {
    match fields.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages
            .iter()
            .enumerate()
            .map(|(index, message)| read_message(index, message))
            .collect(),
        Some(Value::Array(_)) => Err(V1Error::invalid(
            Some("messages"),
            "messages must not be empty",
        )),
        _ => Err(V1Error::invalid(
            Some("messages"),
            "messages must be an array of messages",
        )),
    }
}

/// One message; `developer` is the newer name of `system`.
fn read_message(index: usize, message: &Value) -> Result<ChatMessage, V1Error> {
    let param = |field: &str| format!("messages[{index}].{field}");
    let role = match message["role"].as_str() {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        _ => {
            return Err(V1Error::invalid(
                Some(&param("role")),
                "role must be system, developer, user, assistant or tool",
            ));
        }
    };
    let content = text_of(&message["content"])
        .map_err(|why| V1Error::invalid(Some(&param("content")), why))?;
    let name = match &message["name"] {
        Value::Null => String::new(),
        Value::String(name) => name.clone(),
        _ => {
            return Err(V1Error::invalid(
                Some(&param("name")),
                "name must be a string",
            ));
        }
    };
    let mut read = ChatMessage {
        role: role.into(),
        content,
        name,
        ..ChatMessage::default()
    };
    match role {
        Role::Assistant => read.tool_calls = tool_calls(index, &message["tool_calls"])?,
        Role::Tool => match message["tool_call_id"].as_str() {
            Some(id) if !id.is_empty() => read.tool_call_id = id.to_owned(),
            _ => {
                return Err(V1Error::invalid(
                    Some(&param("tool_call_id")),
                    "a tool message must name the tool_call_id it answers",
                ));
            }
        },
        _ => {}
    }
    Ok(read)
}

/// A message's text: a string, or text parts (joined); other parts cannot be sent.
fn text_of(content: &Value) -> Result<String, &'static str> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(
                |part| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(text)) => Ok(text),
                    _ => Err("only text content parts are supported"),
                },
            )
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        _ => Err("content must be a string or an array of text parts"),
    }
}

fn tool_calls(index: usize, calls: &Value) -> Result<Vec<ToolCall>, V1Error> {
    let calls = match calls {
        Value::Null => return Ok(Vec::new()),
        Value::Array(calls) => calls,
        _ => {
            return Err(V1Error::invalid(
                Some(&format!("messages[{index}].tool_calls")),
                "tool_calls must be an array",
            ));
        }
    };
    calls
        .iter()
        .enumerate()
        .map(|(at, call)| {
            let function = &call["function"];
            match (call["id"].as_str(), function["name"].as_str()) {
                (Some(id), Some(name)) => Ok(ToolCall {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: function["arguments"].as_str().unwrap_or("{}").to_owned(),
                }),
                _ => Err(V1Error::invalid(
                    Some(&format!("messages[{index}].tool_calls[{at}]")),
                    "a tool call needs an id and a function name",
                )),
            }
        })
        .collect()
}
