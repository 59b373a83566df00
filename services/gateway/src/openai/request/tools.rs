//! Structured output and tools: `response_format`, `tools` and `tool_choice`, checked
//! for shape and passed to the provider as JSON text.

use serde_json::{Map, Value};

use super::V1Error;

pub(super) fn response_format(fields: &Map<String, Value>) -> Result<String, V1Error> {
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

pub(super) fn tools(fields: &Map<String, Value>) -> Result<String, V1Error> {
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

pub(super) fn tool_choice(fields: &Map<String, Value>) -> Result<String, V1Error> {
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
