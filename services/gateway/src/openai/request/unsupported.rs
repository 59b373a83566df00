//! The fields asking for what this gateway does not do (more choices, log
//! probabilities, audio, stored completions, ...): accepted at their defaults only.

use serde_json::{Map, Value};

use super::V1Error;

/// Each refused field and why, in the order they are checked.
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

/// Anything but a field's default is 400, naming the field.
pub(super) fn refuse_unsupported(fields: &Map<String, Value>) -> Result<(), V1Error> {
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

fn is_default(name: &str, value: &Value) -> bool {
    match name {
        "n" => value.is_null() || value.as_u64() == Some(1),
        "logprobs" | "store" => value.is_null() || *value == Value::Bool(false),
        "top_logprobs" => value.is_null() || value.as_u64() == Some(0),
        "logit_bias" => value.is_null() || value.as_object().is_some_and(Map::is_empty),
        "modalities" => {
            value.is_null() || *value == Value::Array(vec![Value::String("text".into())])
        }
        _ => value.is_null(),
    }
}
