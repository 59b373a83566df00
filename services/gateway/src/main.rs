//! The gateway service's process: settings, logging, listener, then [`chat_gateway::run`].
//! `chat-gateway healthcheck` asks a running instance whether it is alive (`GET /health`),
//! `chat-gateway ready` whether it is ready (`GET /ready`);
//! `chat-gateway admin ...` manages users and keys ([`chat_gateway::cli`]).

use chat_gateway::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            return chat_common::healthcheck::http_probe(&settings.gateway_listen, probe).await;
        }
        if let Some(args) = chat_gateway::cli::requested() {
            return chat_gateway::cli::run(&settings, args).await;
        }
        let _telemetry = chat_common::telemetry::init("gateway");
        let listener = chat_common::bind(&settings.gateway_listen).await?;
        chat_gateway::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("gateway", outcome.await)
}
