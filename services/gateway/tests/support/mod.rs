//! The whole system in-process: every service on its own port 0 listener, a real
//! Redis key prefix and MySQL database of the test's own, and a real HTTP server
//! speaking OpenAI's wire format as the provider.

#![allow(dead_code)]

use std::time::Duration;

use chat_common::testing::{FakeOpenAi, TestDatabase, TestRedis};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Every service's settings, for a test to adjust before the stack starts.
pub struct Config {
    pub gateway: chat_gateway::Settings,
    pub filter: chat_filter::Settings,
    pub token: chat_token::Settings,
    pub llm: chat_llm::Settings,
    pub history: chat_history::Settings,
}

pub struct Stack {
    /// `http://127.0.0.1:PORT` of the gateway.
    pub base: String,
    pub provider: FakeOpenAi,
    pub http: reqwest::Client,
    pub daily_limit: i64,
    tasks: Vec<JoinHandle<()>>,
    _redis: TestRedis,
    _database: TestDatabase,
}

async fn listener() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    Ok((listener, addr))
}

fn spawn<F>(name: &'static str, service: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = service.await {
            tracing::error!(name, %error, "service stopped with an error");
        }
    })
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        chat_common::telemetry::init_for_tests();
        let redis = TestRedis::new().await?;
        let database = TestDatabase::new().await?;
        let provider = FakeOpenAi::start().await?;
        let (filter_listener, filter_addr) = listener().await?;
        let (token_listener, token_addr) = listener().await?;
        let (llm_listener, llm_addr) = listener().await?;
        let (history_listener, history_addr) = listener().await?;
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", gateway_listener.local_addr()?);

        // Generous internal deadlines: tests run many stacks at once on a small machine.
        let mut config = Config {
            gateway: chat_gateway::Settings {
                filter_addr,
                token_addr,
                llm_addr,
                history_addr,
                filter_timeout_ms: 5000,
                token_timeout_ms: 5000,
                history_timeout_ms: 5000,
                llm_timeout_ms: 10_000,
                rate_limit_per_minute: 0,
                gateway_metrics_listen: String::new(),
                max_output_tokens: 100,
                ..chat_gateway::Settings::default()
            },
            filter: chat_filter::Settings {
                filter_metrics_listen: String::new(),
                ..chat_filter::Settings::default()
            },
            token: chat_token::Settings {
                redis_addr: redis.addr.clone(),
                redis_key_prefix: redis.prefix.clone(),
                redis_timeout_ms: 5000,
                token_metrics_listen: String::new(),
                ..chat_token::Settings::default()
            },
            llm: chat_llm::Settings {
                openai_api_key: Some("sk-test-0123456789abcdef".to_owned().into()),
                openai_base_url: provider.base_url.clone(),
                openai_model: "gpt-test".to_owned(),
                llm_retry_base_ms: 10,
                llm_metrics_listen: String::new(),
                ..chat_llm::Settings::default()
            },
            history: chat_history::Settings {
                mysql_dsn: database.url.clone().into(),
                redis_addr: redis.addr.clone(),
                redis_key_prefix: redis.prefix.clone(),
                store_timeout_ms: 5000,
                history_metrics_listen: String::new(),
                ..chat_history::Settings::default()
            },
        };
        adjust(&mut config);
        let daily_limit = config.token.daily_limit;
        let pending = std::future::pending::<()>;
        let tasks = vec![
            spawn(
                "filter",
                chat_filter::run(config.filter, filter_listener, pending()),
            ),
            spawn(
                "token",
                chat_token::run(config.token, token_listener, pending()),
            ),
            spawn("llm", chat_llm::run(config.llm, llm_listener, pending())),
            spawn(
                "history",
                chat_history::run(config.history, history_listener, pending()),
            ),
            spawn(
                "gateway",
                chat_gateway::run(config.gateway, gateway_listener, pending()),
            ),
        ];
        let stack = Self {
            base,
            provider,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            daily_limit,
            tasks,
            _redis: redis,
            _database: database,
        };
        stack.wait_until_ready().await?;
        Ok(stack)
    }

    /// Until the history service has migrated its schema and answers.
    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        for _ in 0..200 {
            if let Ok(response) = self
                .http
                .get(self.url("/history?user_id=warmup"))
                .send()
                .await
                && response.status() == StatusCode::OK
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the stack did not become ready")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a chat; answers the status and the JSON body.
    pub async fn chat(&self, user_id: &str, text: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(self.url("/chat"))
            .json(&serde_json::json!({"user_id": user_id, "text": text}))
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

impl Drop for Stack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn total_tokens(body: &Value) -> i64 {
    body["usage"]["total_tokens"].as_i64().unwrap_or(-1)
}
