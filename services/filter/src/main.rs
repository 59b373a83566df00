//! The filter service's process: settings, logging, listener, then [`chat_filter::run`].
//! `chat-filter healthcheck` asks a running instance whether it is alive, `chat-filter ready`
//! whether it is ready.

use chat_filter::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            let service = chat_proto::filter_service_server::SERVICE_NAME;
            return chat_common::healthcheck::grpc_probe(&settings.filter_listen, probe, service)
                .await;
        }
        let _telemetry = chat_common::telemetry::init("filter");
        let listener = chat_common::bind(&settings.filter_listen).await?;
        chat_filter::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("filter", outcome.await)
}
