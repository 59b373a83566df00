//! One simulated user's requests over HTTP, and what each answered, classified (in
//! `classify`): a success with the usage it told, an error of the README's table, or
//! something else.

use std::time::{Duration, Instant};

use serde_json::Value;

mod classify;

pub use classify::documented;
use classify::{error_outcome, stream_outcome, unary_outcome, v1_outcome};

/// Longest a chat may take by the documented deadlines (the accounts check, the hops to
/// filter, token and history, the model's `LLM_TIMEOUT_MS` of 12 s, the settlement's
/// retries and the save), with room to spare: an answer later than this is a hang.
pub const DEADLINE: Duration = Duration::from_secs(25);

/// The client gives up after this: well past [`DEADLINE`], so that a late answer is
/// seen as late rather than cut off.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

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
                // Sending failed on a connection the gateway closed as the request went
                // out: a kept-alive connection closed at shutdown (HTTP/1.1's keep-alive
                // race). No handler saw it; had one, the lost-turn check would show it.
                Err(error) if error.is_request() && !error.is_timeout() => {
                    return Outcome::Refused;
                }
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
