//! The history service's process: settings, logging, listener, then [`chat_history::run`].
//! `chat-history healthcheck` asks a running instance whether it is healthy.

use chat_history::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if chat_common::healthcheck::requested() {
            return chat_common::healthcheck::grpc(&settings.history_listen).await;
        }
        let _telemetry = chat_common::telemetry::init("history");
        let listener = chat_common::bind(&settings.history_listen).await?;
        chat_history::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("history", outcome.await)
}
