//! What an answer was, from its status and body: a success with the usage it told, an
//! error of the README's tables (`/chat`'s, `/v1`'s, a stream's `event: error`), or
//! something else.

use futures::StreamExt as _;
use serde_json::Value;

use super::Outcome;

/// The `(status, code)` pairs of the README's error table (`### Errors`).
const DOCUMENTED: &[(u16, &str)] = &[
    (400, "bad_request"),
    (400, "invalid_user_id"),
    (400, "invalid_text"),
    (400, "blocked"),
    (401, "unauthorized"),
    (402, "insufficient_quota"),
    (403, "forbidden"),
    (404, "not_found"),
    (409, "already_exists"),
    (413, "payload_too_large"),
    (415, "unsupported_media_type"),
    (429, "login_throttled"),
    (429, "rate_limited"),
    (429, "too_many_streams"),
    (429, "provider_rate_limited"),
    (429, "quota_exceeded"),
    (500, "service_failed"),
    (503, "service_failed"),
    (504, "service_failed"),
    (500, "service_unavailable"),
    (503, "service_unavailable"),
    (504, "service_unavailable"),
    (500, "service_timeout"),
    (503, "service_timeout"),
    (504, "service_timeout"),
    (503, "overloaded"),
    (503, "streams_overloaded"),
];

/// The `(status, error.code)` pairs of the `/v1` error table; 5xx codes are those of
/// the table above. `400` with no code is a field that cannot be honoured.
const DOCUMENTED_V1: &[(u16, &str)] = &[
    (400, ""),
    (400, "content_filter"),
    (401, "invalid_api_key"),
    (402, "insufficient_quota"),
    (404, "model_not_found"),
    (404, "unknown_url"),
    (429, "rate_limit_exceeded"),
    (429, "quota_exceeded"),
];

/// Whether a `/v1` error is in the README's table of OpenAI-shaped errors.
fn documented_v1(status: u16, code: &str) -> bool {
    DOCUMENTED_V1.contains(&(status, code)) || (status >= 500 && documented(status, code))
}

/// Whether `status` with `code` is a row of the README's error table. A stream's
/// `event: error` has no status of its own: any documented code will do (`status` 0).
pub fn documented(status: u16, code: &str) -> bool {
    DOCUMENTED
        .iter()
        .any(|(known, known_code)| (status == 0 || *known == status) && *known_code == code)
}

/// A non-200 answer: documented if its status and `code` are in the table (`/v1`: its
/// own table, the code in `error.code`). The service that failed is named with the code.
pub(super) fn error_outcome(status: u16, body: String, v1: bool) -> Outcome {
    let parsed = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
    let code = if v1 {
        &parsed["error"]["code"]
    } else {
        &parsed["code"]
    };
    let code = code.as_str().unwrap_or_default().to_owned();
    let known = if v1 {
        documented_v1(status, &code)
    } else {
        documented(status, &code)
    };
    if known {
        let code = match (parsed["service"].as_str(), v1) {
            (Some(service), _) => format!("{code} ({service})"),
            (None, true) => format!("{code} (/v1)"),
            (None, false) => code,
        };
        Outcome::Documented {
            status,
            code,
            charged_unknown: false,
        }
    } else {
        Outcome::Undocumented(format!("{status} {}", truncate(&body)))
    }
}

pub(super) async fn unary_outcome(response: reqwest::Response) -> Outcome {
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(error) => return Outcome::Undocumented(format!("200 body: {error}")),
    };
    match (
        body["reply"].as_str(),
        body["usage"]["total_tokens"].as_i64(),
        body["history_saved"].as_bool(),
    ) {
        (Some(reply), Some(total_tokens), Some(history_saved)) => Outcome::Ok {
            reply: reply.to_owned(),
            total_tokens,
            history_saved: Some(history_saved),
        },
        _ => Outcome::Undocumented(format!(
            "200 without reply/usage: {}",
            truncate(&body.to_string())
        )),
    }
}

pub(super) async fn v1_outcome(response: reqwest::Response) -> Outcome {
    let body: Value = match response.json().await {
        Ok(body) => body,
        Err(error) => return Outcome::Undocumented(format!("/v1 200 body: {error}")),
    };
    match (
        body["choices"][0]["message"]["content"].as_str(),
        body["usage"]["total_tokens"].as_i64(),
    ) {
        (Some(reply), Some(total_tokens)) => Outcome::Ok {
            reply: reply.to_owned(),
            total_tokens,
            history_saved: None,
        },
        _ => Outcome::Undocumented(format!(
            "/v1 200 without content/usage: {}",
            truncate(&body.to_string())
        )),
    }
}

/// Reads the server-sent events to the last one: `done`, `error`, or a cut.
pub(super) async fn stream_outcome(response: reqwest::Response) -> Outcome {
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    let mut reply = String::new();
    let mut started = false;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (event, data) = parse_event(&block);
            match event {
                "start" => started = true,
                "delta" => reply.push_str(data["text"].as_str().unwrap_or_default()),
                "done" => return done_outcome(reply, &data),
                "error" => return stream_error_outcome(&data),
                _ => {}
            }
        }
        match bytes.next().await {
            Some(Ok(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Some(Err(error)) => {
                return Outcome::Undocumented(format!(
                    "stream cut{}: {error}",
                    if started { " after start" } else { "" }
                ));
            }
            None => return Outcome::Undocumented("stream ended without done or error".into()),
        }
    }
}

/// One server-sent event's name (`message` if it has none) and its data, parsed.
fn parse_event(block: &str) -> (&str, Value) {
    let mut event = "message";
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    (event, serde_json::from_str(&data).unwrap_or(Value::Null))
}

/// A stream's `done`: the usage the user was told, after `reply`.
fn done_outcome(reply: String, data: &Value) -> Outcome {
    match (
        data["usage"]["total_tokens"].as_i64(),
        data["history_saved"].as_bool(),
    ) {
        (Some(total_tokens), Some(history_saved)) => Outcome::Ok {
            reply,
            total_tokens,
            history_saved: Some(history_saved),
        },
        _ => Outcome::Undocumented(format!("done without usage: {data}")),
    }
}

/// A stream's `event: error`: after the start, so charged without the user told how much.
fn stream_error_outcome(data: &Value) -> Outcome {
    let code = data["code"].as_str().unwrap_or_default().to_owned();
    if documented(0, &code) {
        let code = match data["service"].as_str() {
            Some(service) => format!("{code} ({service})"),
            None => code,
        };
        Outcome::Documented {
            status: 200,
            code,
            charged_unknown: true,
        }
    } else {
        Outcome::Undocumented(format!("event: error {}", truncate(&data.to_string())))
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(160).collect()
}
