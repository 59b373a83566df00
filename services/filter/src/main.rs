//! The filter service's process: settings, logging, listener, then [`chat_filter::run`].

use chat_filter::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        chat_common::telemetry::init("filter");
        let listener = chat_common::bind(&settings.filter_listen).await?;
        chat_filter::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("filter", outcome.await)
}
