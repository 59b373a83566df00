use chat_llm::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = chat_common::settings::load()?;
    chat_common::telemetry::init("llm");
    let listener = tokio::net::TcpListener::bind(&settings.llm_listen).await?;
    chat_llm::run(settings, listener, chat_common::shutdown_signal()).await
}
