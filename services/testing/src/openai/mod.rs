//! The fake provider: a real HTTP server on 127.0.0.1 speaking OpenAI's Chat Completions
//! API, streamed and not. Started [scripted](FakeOpenAi::start) for the tests (each
//! request does what the test queued) or [fixed](FakeOpenAi::start_fixed) for the
//! benchmark (one prepared answer, nothing added to its latency).

mod fixed;
mod scripted;
mod stream;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::routing::post;
use serde_json::Value;

pub use fixed::{FixedReply, Marks};
pub use scripted::Upstream;
use scripted::{Script, lock};

const PATH: &str = "/v1/chat/completions";

pub struct FakeOpenAi {
    /// Base URL for `OPENAI_BASE_URL`, ending in `/v1`.
    pub base_url: String,
    /// What a scripted fake was told and asked; unused by a fixed one.
    script: Arc<Script>,
    /// Stream marks of a fixed fake; never set by a scripted one.
    marks: Arc<Marks>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    /// A scripted fake: [`Upstream::Echo`] until told otherwise with [`then`](Self::then)
    /// or [`always`](Self::always).
    pub async fn start() -> anyhow::Result<Self> {
        let script = Arc::new(Script::default());
        let app = axum::Router::new()
            .route(PATH, post(scripted::chat_completions))
            .with_state(script.clone());
        Self::serve(app, script, Arc::new(Marks::new())).await
    }

    /// A fixed fake: every request gets `reply`, and streams are [marked](Self::marks).
    pub async fn start_fixed(reply: &FixedReply) -> anyhow::Result<Self> {
        let marks = Arc::new(Marks::new());
        let prepared = Arc::new(fixed::Prepared::new(reply, marks.clone()));
        let app = axum::Router::new()
            .route(PATH, post(fixed::chat_completions))
            .with_state(prepared);
        Self::serve(app, Arc::default(), marks).await
    }

    async fn serve(
        app: axum::Router,
        script: Arc<Script>,
        marks: Arc<Marks>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "fake openai server failed");
            }
        });
        Ok(Self {
            base_url,
            script,
            marks,
            server,
        })
    }

    /// Queues behaviours for the next requests.
    pub fn then(&self, behaviours: impl IntoIterator<Item = Upstream>) {
        lock(&self.script.queue).extend(behaviours);
    }

    /// What every request does once the queue is empty (default: [`Upstream::Echo`]).
    pub fn always(&self, behaviour: Upstream) {
        *lock(&self.script.fallback) = Some(behaviour);
    }

    /// Reports `factor` × our count of each prompt as its `prompt_tokens` (and in the
    /// total), as a provider whose tokenizer counts differently (Llama, Qwen) does.
    pub fn count_prompts_times(&self, factor: f64) {
        *lock(&self.script.prompt_factor) = Some(factor);
    }

    /// The JSON bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.script.requests).clone()
    }

    /// How many streamed answers the client abandoned before their end.
    pub fn cancelled_streams(&self) -> usize {
        self.script.cancelled_streams.load(Ordering::SeqCst)
    }

    /// When a fixed fake sent the latest stream's first and last content chunks.
    pub fn marks(&self) -> Arc<Marks> {
        self.marks.clone()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}
