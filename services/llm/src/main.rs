//! The llm service's process: settings, logging, listener, then [`chat_llm::run`].

use chat_llm::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        chat_common::telemetry::init("llm");
        let listener = chat_common::bind(&settings.llm_listen).await?;
        chat_llm::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("llm", outcome.await)
}
