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
    json!({
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": "stop"
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
    let chunk = |choices: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": choices
        })
    };
    let delta = |delta: Value, finish: Value| {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
    };
    let mut events = vec![delta(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(words(reply).map(|word| delta(json!({"content": word}), Value::Null)));
    events.push(delta(json!({}), json!("stop")));
    if let Some(usage) = usage {
        let mut last = chunk(json!([]));
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

/// How a reply is cut into content chunks: word by word, each keeping its space.
pub(super) fn words(reply: &str) -> impl Iterator<Item = &str> {
    reply.split_inclusive(' ')
}
