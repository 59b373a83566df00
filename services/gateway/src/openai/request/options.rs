//! The scalar options: streaming, output length, sampling (temperature, top_p,
//! penalties), stop sequences, seed and the end user, each checked against what
//! OpenAI accepts.

use serde_json::{Map, Value};

use super::V1Error;

/// `stream_options.include_usage`: whether a stream ends with a usage chunk.
pub(super) fn include_usage(fields: &Map<String, Value>) -> Result<bool, V1Error> {
    match fields.get("stream_options") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(include)) => Ok(*include),
            Some(_) => Err(V1Error::invalid(
                Some("stream_options.include_usage"),
                "include_usage must be a boolean",
            )),
        },
        Some(_) => Err(V1Error::invalid(
            Some("stream_options"),
            "stream_options must be an object",
        )),
    }
}

/// The output tokens asked for; the newer name wins when a client sends both.
pub(super) fn max_tokens(fields: &Map<String, Value>) -> Result<Option<u32>, V1Error> {
    match optional_count(fields, "max_completion_tokens")? {
        Some(asked) => Ok(Some(asked)),
        None => optional_count(fields, "max_tokens"),
    }
}

pub(super) fn optional_bool(
    fields: &Map<String, Value>,
    name: &str,
) -> Result<Option<bool>, V1Error> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(V1Error::invalid(
            Some(name),
            format!("{name} must be a boolean"),
        )),
    }
}

pub(super) fn optional_number(
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

pub(super) fn stop(fields: &Map<String, Value>) -> Result<Vec<String>, V1Error> {
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

pub(super) fn seed(fields: &Map<String, Value>) -> Result<Option<i64>, V1Error> {
    match fields.get("seed") {
        None | Some(Value::Null) => Ok(None),
        Some(seed) => seed
            .as_i64()
            .map(Some)
            .ok_or_else(|| V1Error::invalid(Some("seed"), "seed must be an integer")),
    }
}

/// OpenAI's `user`: the client's own end-user id, empty as unset.
pub(super) fn user(fields: &Map<String, Value>) -> Result<Option<String>, V1Error> {
    match fields.get("user") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(user)) if user.is_empty() => Ok(None),
        Some(Value::String(user)) if user.chars().count() <= 256 => Ok(Some(user.clone())),
        Some(_) => Err(V1Error::invalid(
            Some("user"),
            "user must be a string of at most 256 characters",
        )),
    }
}
