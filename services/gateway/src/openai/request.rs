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
//!
//! The fields are read in groups, a module each: `messages`, the scalar `options`,
//! structured output and `tools`, and the `unsupported` ones.

mod messages;
mod options;
mod tools;
mod unsupported;

use chat_proto::ChatMessage;
use serde_json::{Map, Value};

use super::error::V1Error;
use messages::messages;
use options::{include_usage, max_tokens, optional_bool, optional_number, seed, stop, user};
use tools::{response_format, tool_choice, tools};
use unsupported::refuse_unsupported;

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

/// Reads the JSON body. Fields are checked in the order written here (unsupported
/// ones first), so a body with several faults is refused for the same one each time.
pub fn parse(body: &[u8]) -> Result<Completion, V1Error> {
    let fields = json_object(body)?;
    refuse_unsupported(&fields)?;
    Ok(Completion {
        model: model(&fields)?,
        messages: messages(&fields)?,
        stream: optional_bool(&fields, "stream")?.unwrap_or(false),
        include_usage: include_usage(&fields)?,
        max_tokens: max_tokens(&fields)?,
        temperature: optional_number(&fields, "temperature", 0.0, 2.0)?,
        top_p: optional_number(&fields, "top_p", 0.0, 1.0)?,
        stop: stop(&fields)?,
        seed: seed(&fields)?,
        presence_penalty: optional_number(&fields, "presence_penalty", -2.0, 2.0)?,
        frequency_penalty: optional_number(&fields, "frequency_penalty", -2.0, 2.0)?,
        parallel_tool_calls: optional_bool(&fields, "parallel_tool_calls")?,
        user: user(&fields)?,
        response_format: response_format(&fields)?,
        tools: tools(&fields)?,
        tool_choice: tool_choice(&fields)?,
    })
}

/// The body's fields: it must be JSON, and an object.
fn json_object(body: &[u8]) -> Result<Map<String, Value>, V1Error> {
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        V1Error::invalid(
            None,
            format!("We could not parse the JSON body of your request: {error}"),
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(V1Error::invalid(None, "the body must be a JSON object"));
    };
    Ok(fields)
}

/// The model asked for, trimmed; required.
fn model(fields: &Map<String, Value>) -> Result<String, V1Error> {
    match fields.get("model") {
        Some(Value::String(model)) if !model.trim().is_empty() => Ok(model.trim().to_owned()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(V1Error::invalid(
            Some("model"),
            "you must provide a model parameter",
        )),
        Some(_) => Err(V1Error::invalid(Some("model"), "model must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use chat_proto::Role;
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
