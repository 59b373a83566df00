//! The filter service's process: settings, logging, listener, then [`chat_filter::run`].
//! `chat-filter healthcheck` asks a running instance whether it is healthy.

use chat_filter::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if chat_common::healthcheck::requested() {
            return chat_common::healthcheck::grpc(&settings.filter_listen).await;
        }
        let _telemetry = chat_common::telemetry::init("filter");
        let listener = chat_common::bind(&settings.filter_listen).await?;
        chat_filter::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("filter", outcome.await)
}
