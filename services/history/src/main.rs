//! The history service's process: settings, logging, listener, then [`chat_history::run`].

use chat_history::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        chat_common::telemetry::init("history");
        let listener = chat_common::bind(&settings.history_listen).await?;
        chat_history::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("history", outcome.await)
}
