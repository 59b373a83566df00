//! OpenAI's Chat Completions wire format, as the fakes answer in it: one JSON body, or
//! server-sent events of chunks.

use serde_json::{Value, json};

/// `created` of every answer: a fixed moment keeps the answers byte-for-byte stable.
const CREATED: u64 = 1_700_000_000;

pub(super) fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    })
}

/// The body of a non-streamed answer.
pub(super) fn completion(id: &str, model: &str, reply: &str, usage: &Value) -> Value {
    let message = json!({"role": "assistant", "content": reply});
    whole(id, model, message, "stop", usage)
}

/// A `chat.completion` of one choice, `message`, finished for `finish`.
fn whole(id: &str, model: &str, message: Value, finish: &str, usage: &Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish
        }],
        "usage": usage
    })
}

/// The events of a streamed answer, framed and in order: a role chunk, one chunk per
/// word (so the content chunks are `1..=words`), a finish chunk, the usage chunk when
/// given, `[DONE]`.
pub(super) fn stream_events(
    id: &str,
    model: &str,
    reply: &str,
    usage: Option<&Value>,
) -> Vec<String> {
    let delta = |delta: Value, finish: Value| delta_chunk(id, model, delta, finish);
    let mut events = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(words(reply).map(|word| delta(json!({"content": word}), Value::Null)));
    events.push(delta(json!({}), json!("stop")));
    framed(id, model, events, usage)
}

/// One `chat.completion.chunk` of a stream.
fn chunk(id: &str, model: &str, choices: Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices
    })
}

/// A chunk of the one choice's `delta`, with its `finish` reason (`null` but last).
fn delta_chunk(id: &str, model: &str, delta: Value, finish: Value) -> Value {
    chunk(
        id,
        model,
        json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
    )
}

/// `events`, then the usage chunk when given, framed as server-sent events and ended
/// by `[DONE]`.
fn framed(id: &str, model: &str, mut events: Vec<Value>, usage: Option<&Value>) -> Vec<String> {
    if let Some(usage) = usage {
        let mut last = chunk(id, model, json!([]));
        last["usage"] = usage.clone();
        events.push(last);
    }
    let mut framed: Vec<String> = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    framed.push("data: [DONE]\n\n".to_owned());
    framed
}

/// The id of the tool call a fake makes.
pub(super) const TOOL_CALL_ID: &str = "call_fake_1";

/// The body of a non-streamed answer that calls a tool.
pub(super) fn tool_call_completion(
    id: &str,
    model: &str,
    name: &str,
    arguments: &str,
    usage: &Value,
) -> Value {
    let call = json!({
        "id": TOOL_CALL_ID,
        "type": "function",
        "function": {"name": name, "arguments": arguments}
    });
    let message = json!({"role": "assistant", "content": null, "tool_calls": [call]});
    whole(id, model, message, "tool_calls", usage)
}

/// The events of a streamed tool call, as OpenAI sends them: the role, the call's id
/// and name with empty arguments, the arguments in three pieces, the finish chunk, the
/// usage chunk when given, `[DONE]`.
pub(super) fn tool_call_stream_events(
    id: &str,
    model: &str,
    name: &str,
    arguments: &str,
    usage: Option<&Value>,
) -> Vec<String> {
    let delta = |delta: Value, finish: Value| delta_chunk(id, model, delta, finish);
    let mut events = vec![
        delta(json!({"role": "assistant", "content": null}), Value::Null),
        delta(
            json!({"tool_calls": [{"index": 0, "id": TOOL_CALL_ID, "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ),
    ];
    let chars: Vec<char> = arguments.chars().collect();
    for piece in chars.chunks(chars.len().div_ceil(3).max(1)) {
        let piece: String = piece.iter().collect();
        events.push(delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            Value::Null,
        ));
    }
    events.push(delta(json!({}), json!("tool_calls")));
    framed(id, model, events, usage)
}

/// How a reply is cut into content chunks: word by word, each keeping its space.
pub(super) fn words(reply: &str) -> impl Iterator<Item = &str> {
    reply.split_inclusive(' ')
}
