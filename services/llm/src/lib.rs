//! LLM service (:50055): one chat completion per call, from OpenAI or any server that
//! speaks its Chat Completions API (Ollama, vLLM, LM Studio, ...) at `OPENAI_BASE_URL`.
//!
//! Upstream rate limits are retried with exponential backoff and jitter while the
//! caller's deadline allows, then answered `RESOURCE_EXHAUSTED`; an account without
//! credit is `FAILED_PRECONDITION`; a provider that does not answer in time is
//! `DEADLINE_EXCEEDED`; a request the provider's API cannot take, or that the provider
//! refused as sent (400), is `INVALID_ARGUMENT`; anything else is `INTERNAL`, with no
//! secret in the message.
//!
//! Besides the conversation, a request may name the model (else `OPENAI_MODEL`) and carry
//! OpenAI's options (sampling, stop, seed, response format, tools and tool choice), which
//! are passed to the provider as given; tool calls and the finish reason come back, whole
//! or streamed. Every stream asks the provider for its usage.
//! Without `OPENAI_API_KEY` a built-in mock answers, so the system works with no account.
//!
//! A request goes through `service.rs` (the gRPC edge), `retry.rs`, then a provider
//! in `provider/`; what can fail is in `error.rs`, what is measured in `metrics.rs`.

mod error;
mod metrics;
mod provider;
mod retry;
mod service;
mod settings;

use std::future::Future;

use chat_proto::llm_service_server::LlmServiceServer;
use tokio::net::TcpListener;

pub use provider::ProviderKind;
pub use service::{ChunkStream, Llm};
pub use settings::Settings;

/// Serves completions on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    chat_common::metrics::spawn_server(&settings.llm_metrics_listen).await?;
    metrics::describe(&settings.openai_model);
    let llm = Llm::new(&settings)?;
    // The mock counts every reply; an OpenAI-compatible provider reports its usage and
    // is counted here only when it does not (a stream cut short, a server that omits
    // it), so its tokenizer (about 45 MiB) is loaded on that first need instead.
    if llm.kind() == ProviderKind::Mock {
        chat_common::tokens::warm_up();
    }
    let stopping = chat_common::shutdown::Shutdown::new(settings.shutdown_grace_secs);
    let (reporter, health) = chat_common::grpc::health();
    // Ready until it drains: a provider that fails is answered call by call (and
    // retried), and no probe of ours should spend the provider's quota.
    chat_common::readiness::spawn(
        reporter,
        &[chat_proto::llm_service_server::SERVICE_NAME],
        stopping.clone(),
        || async { Ok(()) },
    )
    .await;
    let router = chat_common::grpc::server()
        .add_service(health)
        .add_service(LlmServiceServer::new(llm));
    chat_common::grpc::serve(router, listener, shutdown, &stopping).await
}
