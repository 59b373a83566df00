//! The history service's process: settings, logging, listener, then [`chat_history::run`].
//! `chat-history healthcheck` asks a running instance whether it is alive, `chat-history ready`
//! whether it is ready.

use chat_history::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            let service = chat_proto::history_service_server::SERVICE_NAME;
            return chat_common::healthcheck::grpc_probe(&settings.history_listen, probe, service)
                .await;
        }
        let _telemetry = chat_common::telemetry::init("history");
        let listener = chat_common::bind(&settings.history_listen).await?;
        chat_history::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("history", outcome.await)
}
