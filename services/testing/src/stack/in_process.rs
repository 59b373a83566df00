//! Every service a task of the caller's runtime, on a port 0 listener of its own, with
//! typed settings a test adjusts before the stack starts.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{API_KEY, Backing, Running, Stack};

/// Every service's settings, for a test to adjust before the stack starts.
pub struct Settings {
    pub gateway: chat_gateway::Settings,
    pub filter: chat_filter::Settings,
    pub token: chat_token::Settings,
    pub llm: chat_llm::Settings,
    pub history: chat_history::Settings,
    /// The keyword service runs only when this is set ([`Settings::with_keyword`]): most
    /// tests need no retrieval, and it costs every stack a dictionary load.
    pub keyword: Option<chat_keyword::Settings>,
    keyword_defaults: chat_keyword::Settings,
}

impl Settings {
    /// Runs the keyword service too, and points the gateway's retrieval and search at it.
    pub fn with_keyword(&mut self) {
        self.keyword = Some(self.keyword_defaults.clone());
    }
}

/// A listener on a port of its own, and its address as the gateway dials it.
async fn listener() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    Ok((listener, addr))
}

fn spawn<F>(name: &'static str, service: F) -> (&'static str, JoinHandle<()>)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        if let Err(error) = service.await {
            tracing::error!(name, %error, "service stopped with an error");
        }
    });
    (name, task)
}

/// The listeners of the five services, bound before the settings are written so the
/// settings can name their addresses.
struct Listeners {
    filter: (TcpListener, String),
    token: (TcpListener, String),
    llm: (TcpListener, String),
    history: (TcpListener, String),
    keyword: (TcpListener, String),
    gateway: (TcpListener, String),
}

impl Listeners {
    async fn bind() -> anyhow::Result<Self> {
        Ok(Self {
            filter: listener().await?,
            token: listener().await?,
            llm: listener().await?,
            history: listener().await?,
            keyword: listener().await?,
            gateway: listener().await?,
        })
    }

    /// Settings for a test: wired to `backing`, no metrics listeners, the rate limiter
    /// and authentication off (see [`Stack`]), and generous deadlines (tests run many
    /// stacks at once on a small machine).
    /// The gateway's settings: every backend of this stack, no rate limits, no
    /// authentication, no retrieval until `with_keyword`.
    fn gateway_settings(&self, backing: &Backing) -> chat_gateway::Settings {
        chat_gateway::Settings {
            filter_addr: self.filter.1.clone(),
            token_addr: self.token.1.clone(),
            llm_addr: self.llm.1.clone(),
            history_addr: self.history.1.clone(),
            // Set by `with_keyword`; without it no retrieval and no search.
            keyword_addr: String::new(),
            filter_timeout_ms: 5000,
            token_timeout_ms: 5000,
            history_timeout_ms: 5000,
            llm_timeout_ms: 10_000,
            // As the other deadlines: a test that sets a rate limit checks the shared
            // limiter, and on a machine busy with the whole suite a Redis answer can take
            // longer than the production 100 ms, which would switch the limiter to its
            // in-process fallback mid-test (its own tests run it as processes).
            rate_limit_redis_timeout_ms: 5000,
            rate_limit_per_minute: 0,
            read_rate_limit_per_minute: 0,
            address_rate_limit_per_minute: 0,
            redis_addr: backing.redis_addr.clone(),
            redis_key_prefix: backing.redis_prefix.clone(),
            gateway_metrics_listen: String::new(),
            max_output_tokens: 100,
            // The model the llm service is given, as OPENAI_MODEL gives it to both.
            openai_model: backing.model.clone(),
            auth_mode: chat_gateway::AuthMode::None,
            ..chat_gateway::Settings::default()
        }
    }

    fn settings(&self, backing: &Backing) -> Settings {
        Settings {
            gateway: self.gateway_settings(backing),
            filter: chat_filter::Settings {
                filter_metrics_listen: String::new(),
                ..chat_filter::Settings::default()
            },
            token: chat_token::Settings {
                redis_addr: backing.redis_addr.clone(),
                redis_key_prefix: backing.redis_prefix.clone(),
                redis_timeout_ms: 5000,
                token_metrics_listen: String::new(),
                ..chat_token::Settings::default()
            },
            llm: chat_llm::Settings {
                openai_api_key: Some(API_KEY.to_owned().into()),
                openai_base_url: backing.provider_url.clone(),
                openai_model: backing.model.clone(),
                llm_retry_base_ms: 10,
                llm_metrics_listen: String::new(),
                ..chat_llm::Settings::default()
            },
            keyword: None,
            keyword_defaults: chat_keyword::Settings {
                mysql_dsn: backing.mysql_dsn.clone().into(),
                keyword_metrics_listen: String::new(),
                keyword_index_interval_ms: 100,
                store_timeout_ms: 5000,
                ..chat_keyword::Settings::default()
            },
            history: chat_history::Settings {
                mysql_dsn: backing.mysql_dsn.clone().into(),
                redis_addr: backing.redis_addr.clone(),
                redis_key_prefix: backing.redis_prefix.clone(),
                store_timeout_ms: 5000,
                // A busy test machine is not a MySQL outage: saves go to the outbox
                // only in the tests that make one.
                history_save_timeout_ms: 5000,
                history_metrics_listen: String::new(),
                ..chat_history::Settings::default()
            },
        }
    }
}

impl Stack {
    /// Starts every service as a task with the test settings, changed by `adjust`, and
    /// waits until the gateway answers. The services stop when the stack is dropped.
    pub async fn in_process(
        backing: &Backing,
        adjust: impl FnOnce(&mut Settings),
    ) -> anyhow::Result<Self> {
        chat_common::telemetry::init_for_tests();
        let listeners = Listeners::bind().await?;
        let mut settings = listeners.settings(backing);
        adjust(&mut settings);
        let pending = std::future::pending::<()>;
        let Listeners {
            filter,
            token,
            llm,
            history,
            keyword,
            gateway,
        } = listeners;
        let mut backends = vec![filter.1, token.1, llm.1, history.1];
        let mut tasks = Vec::new();
        if let Some(keyword_settings) = settings.keyword {
            settings.gateway.keyword_addr = keyword.1.clone();
            tasks.push(spawn(
                "keyword",
                chat_keyword::run(keyword_settings, keyword.0, pending()),
            ));
            backends.push(keyword.1);
        }
        tasks.extend([
            spawn(
                "filter",
                chat_filter::run(settings.filter, filter.0, pending()),
            ),
            spawn("token", chat_token::run(settings.token, token.0, pending())),
            spawn("llm", chat_llm::run(settings.llm, llm.0, pending())),
            spawn(
                "history",
                chat_history::run(settings.history, history.0, pending()),
            ),
            spawn(
                "gateway",
                chat_gateway::run(settings.gateway, gateway.0, pending()),
            ),
        ]);
        let mut stack = Self {
            gateways: vec![gateway.1],
            metrics: Vec::new(),
            backends,
            running: Running::Tasks(tasks),
        };
        stack.wait_until_ready().await?;
        Ok(stack)
    }
}
