//! The llm service's process: settings, logging, listener, then [`chat_llm::run`].
//! `chat-llm healthcheck` asks a running instance whether it is alive, `chat-llm ready`
//! whether it is ready.

use chat_llm::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            let service = chat_proto::llm_service_server::SERVICE_NAME;
            return chat_common::healthcheck::grpc_probe(&settings.llm_listen, probe, service)
                .await;
        }
        let _telemetry = chat_common::telemetry::init("llm");
        let listener = chat_common::bind(&settings.llm_listen).await?;
        chat_llm::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("llm", outcome.await)
}
