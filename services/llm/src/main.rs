//! The llm service's process: settings, logging, listener, then [`chat_llm::run`].
//! `chat-llm healthcheck` asks a running instance whether it is healthy.

use chat_llm::Settings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if chat_common::healthcheck::requested() {
            return chat_common::healthcheck::grpc(&settings.llm_listen).await;
        }
        let _telemetry = chat_common::telemetry::init("llm");
        let listener = chat_common::bind(&settings.llm_listen).await?;
        chat_llm::run(settings, listener, chat_common::shutdown_signal()).await
    };
    chat_common::exit_code("llm", outcome.await)
}
