//! The token service's process: settings, logging, listener, then [`chat_token::run`].
//! `chat-token healthcheck` asks a running instance whether it is alive, `chat-token ready`
//! whether it is ready.

use chat_token::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            let service = chat_proto::token_service_server::SERVICE_NAME;
            return chat_common::healthcheck::grpc_probe(&settings.token_listen, probe, service)
                .await;
        }
        let _telemetry = chat_common::telemetry::init("token");
        let listener = chat_common::bind(&settings.token_listen).await?;
        chat_token::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("token", outcome.await)
}
