use chat_history::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = chat_common::settings::load()?;
    chat_common::telemetry::init("history");
    let listener = tokio::net::TcpListener::bind(&settings.history_listen).await?;
    chat_history::run(settings, listener, chat_common::shutdown_signal()).await
}
