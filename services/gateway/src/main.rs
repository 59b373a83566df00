//! The gateway service's process: settings, logging, listener, then [`chat_gateway::run`].

use chat_gateway::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        chat_common::telemetry::init("gateway");
        let listener = chat_common::bind(&settings.gateway_listen).await?;
        chat_gateway::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("gateway", outcome.await)
}
