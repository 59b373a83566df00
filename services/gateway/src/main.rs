use chat_gateway::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = chat_common::settings::load()?;
    chat_common::telemetry::init("gateway");
    let listener = tokio::net::TcpListener::bind(&settings.gateway_listen).await?;
    chat_gateway::run(settings, listener, chat_common::shutdown_signal()).await
}
