//! The body of `POST /v1/chat/completions`, read field by field: every field OpenAI
//! documents is either honoured (passed to the llm service, or acted on here) or, when
//! it asks for something this gateway cannot do, refused with 400 naming it in `param`.
//! Fields OpenAI does not know are ignored, as OpenAI ignores them.
//!
//! | field | what happens |
//! |---|---|
//! | `model`, `messages`, `stream`, `stream_options.include_usage` | honoured |
//! | `temperature`, `top_p`, `stop`, `seed`, `presence_penalty`, `frequency_penalty` | passed to the provider |
//! | `max_tokens`, `max_completion_tokens` | capped by `MAX_OUTPUT_TOKENS` |
//! | `user` | passed to the provider as the end user; in `AUTH_MODE=none` also the acting user |
//! | `response_format`, `tools`, `tool_choice`, `parallel_tool_calls` | passed to the provider |
//! | `n` | 1 only |
//! | `logprobs`, `top_logprobs`, `logit_bias`, `store`, `audio`, `prediction`, `functions`, `function_call`, `reasoning_effort`, `verbosity`, `web_search_options` | their defaults only (`false`, `null`, `{}`, ...) |
//! | `modalities` | `["text"]` only |
//! | `metadata`, `service_tier` | accepted, no effect (they concern OpenAI's storage and billing tier) |

use chat_proto::{ChatMessage, Role, ToolCall};
use serde_json::{Map, Value};

use super::error::V1Error;

/// A request as the llm service will get it, and what the gateway itself acts on.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
    pub include_usage: bool,
    /// As asked (capped later); `None`: the output cap.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub parallel_tool_calls: Option<bool>,
    /// OpenAI's `user`: the client's own end-user id.
    pub user: Option<String>,
    /// JSON text, empty when unset.
    pub response_format: String,
    pub tools: String,
    pub tool_choice: String,
}

/// Reads the JSON body.
pub fn parse(body: &[u8]) -> Result<Completion, V1Error> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        V1Error::invalid(
            None,
            format!("We could not parse the JSON body of your request: {error}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(V1Error::invalid(None, "the body must be a JSON object"));
    };
    refuse_unsupported(&fields)?;
    let model = match fields.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => model.trim().to_owned(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(V1Error::invalid(
                Some("model"),
                "you must provide a model parameter",
            ));
        }
        Some(_) => return Err(V1Error::invalid(Some("model"), "model must be a string")),
    };
    let messages = match fields.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages
            .iter()
            .enumerate()
            .map(|(index, message)| read_message(index, message))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(V1Error::invalid(
                Some("messages"),
                "messages must not be empty",
            ));
        }
        _ => {
            return Err(V1Error::invalid(
                Some("messages"),
                "messages must be an array of messages",
            ));
        }
    };
    let stream = optional_bool(&fields, "stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(_) => {
                return Err(V1Error::invalid(
                    Some("stream_options.include_usage"),
                    "include_usage must be a boolean",
                ));
            }
        },
        Some(_) => {
            return Err(V1Error::invalid(
                Some("stream_options"),
                "stream_options must be an object",
            ));
        }
    };
    // The newer name wins when a client sends both.
    let max_tokens = match optional_count(&fields, "max_completion_tokens")? {
        Some(asked) => Some(asked),
        None => optional_count(&fields, "max_tokens")?,
    };
    Ok(Completion {
        model,
        messages,
        stream,
        include_usage,
        max_tokens,
        temperature: optional_number(&fields, "temperature", 0.0, 2.0)?,
        top_p: optional_number(&fields, "top_p", 0.0, 1.0)?,
        stop: stop(&fields)?,
        seed: match fields.get("seed") {
            None | Some(Value::Null) => None,
            Some(seed) => Some(
                seed.as_i64()
                    .ok_or_else(|| V1Error::invalid(Some("seed"), "seed must be an integer"))?,
            ),
        },
        presence_penalty: optional_number(&fields, "presence_penalty", -2.0, 2.0)?,
        frequency_penalty: optional_number(&fields, "frequency_penalty", -2.0, 2.0)?,
        parallel_tool_calls: optional_bool(&fields, "parallel_tool_calls")?,
        user: match fields.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(user)) if user.is_empty() => None,
            Some(Value::String(user)) if user.chars().count() <= 256 => Some(user.clone()),
            Some(_) => {
                return Err(V1Error::invalid(
                    Some("user"),
                    "user must be a string of at most 256 characters",
                ));
            }
        },
        response_format: response_format(&fields)?,
        tools: tools(&fields)?,
        tool_choice: tool_choice(&fields)?,
    })
}

/// Fields asking for what this gateway does not do: anything but their default is 400.
fn refuse_unsupported(fields: &Map<String, Value>) -> Result<(), V1Error> {
    let is_default = |name: &str, value: &Value| match name {
        "n" => value.is_null() || value.as_u64() == Some(1),
        "logprobs" | "store" => value.is_null() || *value == Value::Bool(false),
        "top_logprobs" => value.is_null() || value.as_u64() == Some(0),
        "logit_bias" => value.is_null() || value.as_object().is_some_and(Map::is_empty),
        "modalities" => {
            value.is_null() || *value == Value::Array(vec![Value::String("text".into())])
        }
        _ => value.is_null(),
    };
    const UNSUPPORTED: [(&str, &str); 12] = [
        ("n", "only one choice (n = 1) is supported"),
        ("logprobs", "log probabilities are not supported"),
        ("top_logprobs", "log probabilities are not supported"),
        ("logit_bias", "logit_bias is not supported"),
        ("store", "stored completions are not supported"),
        ("audio", "audio output is not supported"),
        ("modalities", "only text output is supported"),
        ("prediction", "predicted outputs are not supported"),
        ("functions", "functions is deprecated: use tools"),
        (
            "function_call",
            "function_call is deprecated: use tool_choice",
        ),
        ("reasoning_effort", "reasoning_effort is not supported"),
        ("web_search_options", "web search is not supported"),
    ];
    for (name, why) in UNSUPPORTED {
        if let Some(value) = fields.get(name)
            && !is_default(name, value)
        {
            return Err(V1Error::invalid(Some(name), why));
        }
    }
    if fields
        .get("verbosity")
        .is_some_and(|value| !value.is_null())
    {
        return Err(V1Error::invalid(
            Some("verbosity"),
            "verbosity is not supported",
        ));
    }
    Ok(())
}

fn optional_bool(fields: &Map<String, Value>, name: &str) -> Result<Option<bool>, V1Error> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(V1Error::invalid(
            Some(name),
            format!("{name} must be a boolean"),
        )),
    }
}

fn optional_number(
    fields: &Map<String, Value>,
    name: &str,
    min: f64,
    max: f64,
) -> Result<Option<f32>, V1Error> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_f64() {
            Some(number) if (min..=max).contains(&number) => Ok(Some(number as f32)),
            _ => Err(V1Error::invalid(
                Some(name),
                format!("Invalid value for '{name}': it must be a number from {min} to {max}"),
            )),
        },
    }
}

fn optional_count(fields: &Map<String, Value>, name: &str) -> Result<Option<u32>, V1Error> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(count) if count > 0 => Ok(Some(u32::try_from(count).unwrap_or(u32::MAX))),
            _ => Err(V1Error::invalid(
                Some(name),
                format!("Invalid value for '{name}': it must be a positive integer"),
            )),
        },
    }
}

fn stop(fields: &Map<String, Value>) -> Result<Vec<String>, V1Error> {
    let refuse = || {
        V1Error::invalid(
            Some("stop"),
            "stop must be a string or an array of at most 4 strings",
        )
    };
    match fields.get("stop") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(stop)) => Ok(vec![stop.clone()]),
        Some(Value::Array(stops)) if stops.len() <= 4 => stops
            .iter()
            .map(|stop| stop.as_str().map(str::to_owned).ok_or_else(refuse))
            .collect(),
        Some(_) => Err(refuse()),
    }
}

fn response_format(fields: &Map<String, Value>) -> Result<String, V1Error> {
    match fields.get("response_format") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(format @ Value::Object(object)) => match object.get("type").and_then(Value::as_str) {
            Some("text" | "json_object") => Ok(format.to_string()),
            Some("json_schema") if object.get("json_schema").is_some_and(Value::is_object) => {
                Ok(format.to_string())
            }
            _ => Err(V1Error::invalid(
                Some("response_format"),
                "response_format.type must be text, json_object, or json_schema with a json_schema object",
            )),
        },
        Some(_) => Err(V1Error::invalid(
            Some("response_format"),
            "response_format must be an object",
        )),
    }
}

fn tools(fields: &Map<String, Value>) -> Result<String, V1Error> {
    let tools = match fields.get("tools") {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(V1Error::invalid(Some("tools"), "tools must be an array")),
    };
    for (index, tool) in tools.iter().enumerate() {
        let named = tool["function"]["name"]
            .as_str()
            .is_some_and(|name| !name.is_empty());
        if tool["type"] != "function" || !named {
            return Err(V1Error::invalid(
                Some(&format!("tools[{index}]")),
                "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
            ));
        }
    }
    if tools.is_empty() {
        return Ok(String::new());
    }
    Ok(Value::Array(tools.clone()).to_string())
}

fn tool_choice(fields: &Map<String, Value>) -> Result<String, V1Error> {
    match fields.get("tool_choice") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(choice @ Value::String(name))
            if matches!(name.as_str(), "none" | "auto" | "required") =>
        {
            Ok(choice.to_string())
        }
        Some(choice @ Value::Object(object))
            if object.get("type").and_then(Value::as_str) == Some("function")
                && choice["function"]["name"].is_string() =>
        {
            Ok(choice.to_string())
        }
        Some(_) => Err(V1Error::invalid(
            Some("tool_choice"),
            "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: Value) -> Result<Completion, V1Error> {
        parse(body.to_string().as_bytes())
    }

    fn param_of(body: Value) -> Option<String> {
        parsed(body).err().and_then(|error| error.param)
    }

    fn base() -> Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = base();
        body[field] = value;
        body
    }

    #[test]
    fn every_field_is_read_or_refused_by_name() {
        let read = parsed(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "ann"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}
            ],
            "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 9, "max_completion_tokens": 7,
            "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 3,
            "presence_penalty": 1, "frequency_penalty": -1, "parallel_tool_calls": false,
            "user": "end-user", "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "n": 1, "logprobs": false, "store": false, "metadata": {"a": "b"},
            "service_tier": "auto", "some_future_field": 1
        }));
        let Ok(read) = read else {
            panic!("{read:?}");
        };
        assert_eq!(read.model, "m");
        assert!(read.stream && read.include_usage);
        assert_eq!(read.max_tokens, Some(7), "max_completion_tokens wins");
        assert_eq!(read.temperature, Some(0.2));
        assert_eq!(read.top_p, Some(0.9));
        assert_eq!(read.stop, ["END"]);
        assert_eq!(read.seed, Some(3));
        assert_eq!(read.presence_penalty, Some(1.0));
        assert_eq!(read.frequency_penalty, Some(-1.0));
        assert_eq!(read.parallel_tool_calls, Some(false));
        assert_eq!(read.user.as_deref(), Some("end-user"));
        assert_eq!(read.response_format, r#"{"type":"json_object"}"#);
        assert!(read.tools.contains("\"name\":\"f\""));
        assert_eq!(read.tool_choice, r#""auto""#);
        let roles: Vec<Role> = read.messages.iter().map(ChatMessage::role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(read.messages[1].content, "ab");
        assert_eq!(read.messages[1].name, "ann");
        assert_eq!(read.messages[2].tool_calls[0].arguments, "{\"x\":1}");
        assert_eq!(read.messages[3].tool_call_id, "c1");

        let refused = [
            (json!({"messages": []}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                with("messages", json!([{"role": "robot", "content": "x"}])),
                "messages[0].role",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                ),
                "messages[0].content",
            ),
            (
                with("messages", json!([{"role": "tool", "content": "x"}])),
                "messages[0].tool_call_id",
            ),
            (
                with(
                    "messages",
                    json!([{"role": "assistant", "tool_calls": [{"id": "x"}]}]),
                ),
                "messages[0].tool_calls[0]",
            ),
            (with("temperature", json!(3)), "temperature"),
            (with("top_p", json!("high")), "top_p"),
            (with("max_tokens", json!(0)), "max_tokens"),
            (
                with("max_completion_tokens", json!(-1)),
                "max_completion_tokens",
            ),
            (with("stop", json!(["a", "b", "c", "d", "e"])), "stop"),
            (with("seed", json!(1.5)), "seed"),
            (with("stream", json!("yes")), "stream"),
            (
                with("stream_options", json!({"include_usage": 1})),
                "stream_options.include_usage",
            ),
            (with("user", json!(7)), "user"),
            (
                with("response_format", json!({"type": "xml"})),
                "response_format",
            ),
            (
                with("tools", json!([{"type": "function", "function": {}}])),
                "tools[0]",
            ),
            (with("tool_choice", json!("sometimes")), "tool_choice"),
            (
                with("parallel_tool_calls", json!("no")),
                "parallel_tool_calls",
            ),
            (with("n", json!(2)), "n"),
            (with("logprobs", json!(true)), "logprobs"),
            (with("top_logprobs", json!(3)), "top_logprobs"),
            (with("logit_bias", json!({"50256": -100})), "logit_bias"),
            (with("store", json!(true)), "store"),
            (with("audio", json!({"voice": "alloy"})), "audio"),
            (with("modalities", json!(["text", "audio"])), "modalities"),
            (with("prediction", json!({"type": "content"})), "prediction"),
            (with("functions", json!([{"name": "f"}])), "functions"),
            (with("function_call", json!("auto")), "function_call"),
            (with("reasoning_effort", json!("high")), "reasoning_effort"),
            (with("verbosity", json!("low")), "verbosity"),
            (with("web_search_options", json!({})), "web_search_options"),
        ];
        for (body, param) in refused {
            assert_eq!(param_of(body.clone()).as_deref(), Some(param), "{body}");
        }
        assert!(parse(b"{not json").is_err());
        assert!(parse(b"[1]").is_err());
    }
}
