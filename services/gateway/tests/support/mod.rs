//! The whole system in-process (chat-testing's launcher): every service on its own port
//! 0 listener, a real Redis key prefix and MySQL database of the test's own, and a real
//! HTTP server speaking OpenAI's wire format as the provider; and the calls the tests
//! make on the gateway's API.

#![allow(dead_code)]

pub mod browser;

use std::time::Duration;

use chat_testing::stack::{self, Backing};
use chat_testing::{FakeOpenAi, TestDatabase, TestRedis};
use reqwest::StatusCode;
use serde_json::Value;

pub struct Stack {
    /// First, so the services stop before what they use goes away.
    _services: stack::Stack,
    /// `http://127.0.0.1:PORT` of the gateway.
    pub base: String,
    pub provider: FakeOpenAi,
    pub http: reqwest::Client,
    pub daily_limit: i64,
    _redis: TestRedis,
    _database: TestDatabase,
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut stack::Settings)) -> anyhow::Result<Self> {
        let redis = TestRedis::new().await?;
        let database = TestDatabase::new().await?;
        let provider = FakeOpenAi::start().await?;
        let mut daily_limit = 0;
        let services =
            stack::Stack::in_process(&Backing::of(&redis, &database, &provider), |settings| {
                adjust(settings);
                daily_limit = settings.token.daily_limit;
            })
            .await?;
        Ok(Self {
            base: services.gateway().to_owned(),
            _services: services,
            provider,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            daily_limit,
            _redis: redis,
            _database: database,
        })
    }

    /// A stack with authentication required, `admin_key` as the admin API key and a first
    /// admin password set; `adjust` changes the settings further.
    pub async fn start_with_auth(
        admin_key: &str,
        adjust: impl FnOnce(&mut stack::Settings),
    ) -> anyhow::Result<Self> {
        Self::start_with(|settings| {
            settings.gateway.auth_mode = chat_gateway::AuthMode::Required;
            settings.gateway.admin_api_key = Some(admin_key.to_owned().into());
            settings.gateway.admin_password = Some("first-admin-password".to_owned().into());
            adjust(settings);
        })
        .await
    }

    /// A stack with the keyword service (so `GET /search` answers) and a daily limit no
    /// test reaches; `adjust` changes the settings further.
    pub async fn start_with_keyword(
        adjust: impl FnOnce(&mut stack::Settings),
    ) -> anyhow::Result<Self> {
        Self::start_with(|settings| {
            settings.with_keyword();
            settings.token.daily_limit = 10_000_000;
            adjust(settings);
        })
        .await
    }

    /// The provider's last request asked for a stream.
    pub fn ensure_the_provider_streamed(&self) -> anyhow::Result<()> {
        let asked = self.provider.requests();
        anyhow::ensure!(
            asked
                .last()
                .is_some_and(|request| request["stream"] == true),
            "the provider was asked for a stream: {asked:?}"
        );
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The messages (role and content objects) of the provider's last request; none
    /// before the first.
    pub fn last_provider_messages(&self) -> Vec<Value> {
        self.provider
            .requests()
            .last()
            .and_then(|request| request["messages"].as_array().cloned())
            .unwrap_or_default()
    }

    /// A connection to the stack's own MySQL database, for what the API does not show.
    pub async fn mysql(&self) -> anyhow::Result<mysql_async::Conn> {
        let pool = mysql_async::Pool::new(chat_history::mysql_opts(&self._database.url)?);
        Ok(pool.get_conn().await?)
    }

    /// Every Redis key of the stack (they all start with its own prefix), prefix removed.
    pub async fn redis_keys(&self) -> anyhow::Result<Vec<String>> {
        let pool = chat_common::redis::pool(&self._redis.addr, 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self._redis.prefix))
            .query_async(&mut connection)
            .await?;
        let prefix = self._redis.prefix.len();
        Ok(keys
            .into_iter()
            .map(|key| key[prefix..].to_owned())
            .collect())
    }

    /// The token service's calibration of `model` (the provider's prompt count over
    /// ours), if it has learnt one.
    pub async fn calibration(&self, model: &str) -> anyhow::Result<Option<f64>> {
        let pool = chat_common::redis::pool(&self._redis.addr, 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await?;
        let ratio: Option<f64> = redis::cmd("HGET")
            .arg(format!("{}calibration:{model}", self._redis.prefix))
            .arg("ratio")
            .query_async(&mut connection)
            .await?;
        Ok(ratio)
    }

    /// POSTs a chat in `conversation` (or none named); answers status and body.
    pub async fn chat_in(
        &self,
        user_id: &str,
        conversation: Option<&str>,
        text: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut body = serde_json::json!({"user_id": user_id, "text": text});
        if let Some(id) = conversation {
            body["conversation_id"] = id.into();
        }
        let response = self.http.post(self.url("/chat")).json(&body).send().await?;
        Ok((response.status(), response.json().await?))
    }

    /// POSTs a chat; answers the response as it came, headers and all.
    pub async fn post_chat(&self, user_id: &str, text: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.url("/chat"))
            .json(&serde_json::json!({"user_id": user_id, "text": text}))
            .send()
            .await?)
    }

    /// POSTs a chat; answers the status and the JSON body.
    pub async fn chat(&self, user_id: &str, text: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self.post_chat(user_id, text).await?;
        Ok((response.status(), response.json().await?))
    }

    /// `GET /search` for `user`; answers the status and the JSON body.
    pub async fn search(&self, user: &str, query: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .get(self.url("/search"))
            .query(&[("user_id", user), ("q", query)])
            .send()
            .await?;
        Ok((response.status(), response.json().await?))
    }

    /// The user's history as (role, text) pairs, oldest first.
    pub async fn history(&self, user_id: &str) -> anyhow::Result<Vec<(String, String)>> {
        let text = |item: &Value, field: &str| item[field].as_str().unwrap_or_default().to_owned();
        Ok(self
            .history_items(user_id)
            .await?
            .iter()
            .map(|item| (text(item, "role"), text(item, "text")))
            .collect())
    }

    /// The texts of the user's history, oldest first.
    pub async fn history_texts(&self, user_id: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .history(user_id)
            .await?
            .into_iter()
            .map(|(_, text)| text)
            .collect())
    }

    /// The user's history as the API returns it, every field included.
    pub async fn history_items(&self, user_id: &str) -> anyhow::Result<Vec<Value>> {
        let response = self
            .http
            .get(self.url(&format!("/history?user_id={user_id}")))
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "history: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// The user's history once it holds `count` messages (work that finishes after the
    /// client left saves in the background), or as it is after about two seconds.
    pub async fn history_with(&self, user_id: &str, count: usize) -> anyhow::Result<Vec<Value>> {
        for _ in 0..100 {
            let items = self.history_items(user_id).await?;
            if items.len() >= count {
                return Ok(items);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.history_items(user_id).await
    }

    pub async fn remaining(&self, user_id: &str) -> anyhow::Result<i64> {
        let body: Value = self
            .http
            .get(self.url(&format!("/quota?user_id={user_id}")))
            .send()
            .await?
            .json()
            .await?;
        body["remaining"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("no remaining in {body}"))
    }
}

pub fn total_tokens(body: &Value) -> i64 {
    body["usage"]["total_tokens"].as_i64().unwrap_or(-1)
}

/// The event name (`message` unless named) and data of one server-sent-events block;
/// `None` for a block without data (a keep-alive comment).
pub fn sse_event(block: &str) -> Option<(String, String)> {
    let mut name = String::from("message");
    let mut data = String::new();
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = value.trim().to_owned();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    (!data.is_empty()).then_some((name, data))
}
