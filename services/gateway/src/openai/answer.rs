//! The JSON OpenAI's clients read: the completion object of a whole answer, the
//! envelope of a stream's chunks, and usage.

use std::time::{SystemTime, UNIX_EPOCH};

use chat_proto::{CompleteResponse, Usage};
use serde_json::{Value, json};

/// Ids and times of one answer, shared by its chunks.
#[derive(Debug, Clone)]
pub struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    pub(super) fn new(model: &str) -> Self {
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            model: model.to_owned(),
        }
    }

    pub(super) fn with_model(&self, model: &str) -> Self {
        Self {
            model: if model.is_empty() {
                self.model.clone()
            } else {
                model.to_owned()
            },
            ..self.clone()
        }
    }

    pub(super) fn envelope(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        })
    }

    /// A chunk of the one choice.
    pub(super) fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.envelope(json!([{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }]))
    }
}

pub(super) fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

/// The response object of a non-streamed completion.
pub(super) fn completion_json(head: &Head, answer: &CompleteResponse) -> Value {
    let head = head.with_model(&answer.model);
    let mut message = json!({
        "role": "assistant",
        "content": answer.reply,
        "refusal": null,
    });
    if !answer.tool_calls.is_empty() {
        if answer.reply.is_empty() {
            message["content"] = Value::Null;
        }
        let calls = answer.tool_calls.iter().map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            })
        });
        message["tool_calls"] = Value::Array(calls.collect());
    }
    let finish_reason = match answer.finish_reason.as_str() {
        "" if answer.tool_calls.is_empty() => "stop",
        "" => "tool_calls",
        reason => reason,
    };
    json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage_json(&answer.usage.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_answer_has_openai_fields() {
        let answer = CompleteResponse {
            reply: String::new(),
            usage: Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 7,
                total_tokens: 12,
            }),
            model: "gpt-a-2024".into(),
            tool_calls: vec![chat_proto::ToolCall {
                id: "call_1".into(),
                name: "f".into(),
                arguments: "{}".into(),
            }],
            finish_reason: "tool_calls".into(),
        };
        let body = completion_json(&Head::new("gpt-a"), &answer);
        assert!(
            body["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("chatcmpl-"))
        );
        assert_eq!(body["object"], "chat.completion");
        assert!(
            body["created"]
                .as_u64()
                .is_some_and(|created| created > 1_700_000_000)
        );
        assert_eq!(body["model"], "gpt-a-2024", "the model that answered");
        let choice = &body["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(body["usage"]["total_tokens"], 12);
    }
}
