//! One simulated user's requests over HTTP, and what each answered, classified: a
//! success with the usage it told, an error of the README's table, or something else.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::Value;

/// Longest a chat may take by the documented deadlines (the accounts check, the hops to
/// filter, token and history, the model's `LLM_TIMEOUT_MS` of 12 s, the settlement's
/// retries and the save), with room to spare: an answer later than this is a hang.
pub const DEADLINE: Duration = Duration::from_secs(25);

/// The client gives up after this: well past [`DEADLINE`], so that a late answer is
/// seen as late rather than cut off.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

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

/// Which route a chat took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Stream,
    /// `POST /v1/chat/completions`, not streamed, the conversation named by
    /// `X-Conversation-Id`.
    V1,
}

/// What one chat answered.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// 200, or a stream that ended with `done`: the usage the user was told.
    /// `history_saved` is `None` on `/v1`, which makes no promise about the history.
    Ok {
        reply: String,
        total_tokens: i64,
        history_saved: Option<bool>,
    },
    /// A documented error. `charged_unknown`: it came after the stream started (the
    /// partial reply was charged, but the user was not told how much).
    Documented {
        status: u16,
        code: String,
        charged_unknown: bool,
    },
    /// No connection could be made: nothing reached the gateway.
    Refused,
    /// Anything else: an undocumented status or code, a connection cut mid-answer, a
    /// body that does not parse.
    Undocumented(String),
    /// No complete answer within [`CLIENT_TIMEOUT`].
    Hang,
}

impl Outcome {
    /// Whether the gateway may have charged something the user was not told.
    pub fn charge_unknown(&self) -> bool {
        match self {
            Self::Ok { .. } | Self::Refused => false,
            Self::Documented {
                charged_unknown, ..
            } => *charged_unknown,
            Self::Undocumented(_) | Self::Hang => true,
        }
    }
}

/// One chat as the client saw it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub client: usize,
    /// The user's turn number in its conversation, from 0, in the order sent.
    pub seq: usize,
    pub user_id: String,
    pub conversation_id: String,
    pub route: Route,
    pub text: String,
    /// When it was sent, to tell the chats in flight when a fault began.
    pub sent_at: Instant,
    pub latency: Duration,
    pub outcome: Outcome,
}

impl Answer {
    /// Acknowledged as saved: the turn must be in the history exactly once.
    pub fn acknowledged(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Ok {
                history_saved: Some(true),
                ..
            }
        )
    }

    /// Too late, or never.
    pub fn hung(&self) -> bool {
        matches!(self.outcome, Outcome::Hang) || self.latency > DEADLINE
    }
}

/// A user's way in: the gateway, the user's id and API key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub gateway: String,
    pub user_id: String,
    pub key: String,
}

impl Caller {
    /// `POST /conversations`: a new conversation's id.
    pub async fn new_conversation(
        &self,
        http: &reqwest::Client,
        title: &str,
    ) -> anyhow::Result<String> {
        let response = http
            .post(format!("{}/conversations", self.gateway))
            .bearer_auth(&self.key)
            .json(&serde_json::json!({ "title": title }))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "POST /conversations: {}",
            response.status()
        );
        let body: Value = response.json().await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("POST /conversations: no id"))
    }

    /// Every message of a conversation through the API, oldest first: (role, text).
    pub async fn messages(
        &self,
        http: &reqwest::Client,
        conversation_id: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut messages = Vec::new();
        let mut cursor = String::new();
        loop {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/conversations/{conversation_id}/messages", self.gateway),
                [("limit", "200"), ("cursor", cursor.as_str())],
            )?;
            let response = http.get(url).bearer_auth(&self.key).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "GET /conversations/{conversation_id}/messages: {}",
                response.status()
            );
            let page: Value = response.json().await?;
            for message in page["messages"].as_array().into_iter().flatten() {
                messages.push((
                    message["role"].as_str().unwrap_or_default().to_owned(),
                    message["text"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            match page["next_cursor"].as_str() {
                Some(next) if !next.is_empty() => cursor = next.to_owned(),
                _ => return Ok(messages),
            }
        }
    }

    /// One chat on `route`, timed and classified. `conversation` is the conversation's
    /// id, or on `/v1` the client's key for it.
    pub async fn chat(
        &self,
        http: &reqwest::Client,
        route: Route,
        conversation: &str,
        text: &str,
    ) -> (Duration, Outcome) {
        let started = Instant::now();
        let request = match route {
            Route::Chat | Route::Stream => http
                .post(format!(
                    "{}{}",
                    self.gateway,
                    if route == Route::Chat {
                        "/chat"
                    } else {
                        "/chat/stream"
                    }
                ))
                .json(&serde_json::json!({
                    "user_id": self.user_id,
                    "text": text,
                    "conversation_id": conversation,
                })),
            Route::V1 => http
                .post(format!("{}/v1/chat/completions", self.gateway))
                .header("x-conversation-id", conversation)
                .json(&serde_json::json!({
                    "model": crate::MODEL,
                    "messages": [{"role": "user", "content": text}],
                })),
        };
        let request = request.bearer_auth(&self.key).send();
        let outcome = match tokio::time::timeout(CLIENT_TIMEOUT, async {
            let response = match request.await {
                Ok(response) => response,
                Err(error) if error.is_connect() => return Outcome::Refused,
                Err(error) => return Outcome::Undocumented(format!("request: {error}")),
            };
            let status = response.status().as_u16();
            if status != 200 {
                let body = response.text().await.unwrap_or_default();
                return error_outcome(status, body, route == Route::V1);
            }
            match route {
                Route::Chat => unary_outcome(response).await,
                Route::Stream => stream_outcome(response).await,
                Route::V1 => v1_outcome(response).await,
            }
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Hang,
        };
        (started.elapsed(), outcome)
    }
}

/// A non-200 answer: documented if its status and `code` are in the table (`/v1`: its
/// own table, the code in `error.code`). The service that failed is named with the code.
fn error_outcome(status: u16, body: String, v1: bool) -> Outcome {
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

async fn unary_outcome(response: reqwest::Response) -> Outcome {
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

async fn v1_outcome(response: reqwest::Response) -> Outcome {
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
async fn stream_outcome(response: reqwest::Response) -> Outcome {
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    let mut reply = String::new();
    let mut started = false;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event:") {
                    event = name.trim();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match event {
                "start" => started = true,
                "delta" => reply.push_str(data["text"].as_str().unwrap_or_default()),
                "done" => {
                    return match (
                        data["usage"]["total_tokens"].as_i64(),
                        data["history_saved"].as_bool(),
                    ) {
                        (Some(total_tokens), Some(history_saved)) => Outcome::Ok {
                            reply,
                            total_tokens,
                            history_saved: Some(history_saved),
                        },
                        _ => Outcome::Undocumented(format!("done without usage: {data}")),
                    };
                }
                "error" => {
                    let code = data["code"].as_str().unwrap_or_default().to_owned();
                    return if documented(0, &code) {
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
                        Outcome::Undocumented(format!(
                            "event: error {}",
                            truncate(&data.to_string())
                        ))
                    };
                }
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

fn truncate(text: &str) -> String {
    text.chars().take(160).collect()
}
