use chat_token::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings: Settings = chat_common::settings::load()?;
    chat_common::telemetry::init("token");
    let listener = tokio::net::TcpListener::bind(&settings.token_listen).await?;
    chat_token::run(settings, listener, chat_common::shutdown_signal()).await
}
