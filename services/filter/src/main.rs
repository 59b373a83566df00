use chat_filter::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = chat_common::settings::load()?;
    chat_common::telemetry::init("filter");
    let listener = tokio::net::TcpListener::bind(&settings.filter_listen).await?;
    chat_filter::run(settings, listener, chat_common::shutdown_signal()).await
}
