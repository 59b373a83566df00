//! The keyword service's process: settings, logging, listener, then [`chat_keyword::run`].
//! `chat-keyword healthcheck` asks a running instance whether it is alive, `chat-keyword ready`
//! whether it is ready;
//! `chat-keyword reindex [USER_ID]` rebuilds the index of one user, or everyone's, from
//! the history.

use chat_keyword::Settings;

#[tokio::main]
#[allow(clippy::print_stdout)] // `reindex` answers on stdout.
async fn main() -> std::process::ExitCode {
    let outcome = async {
        let settings: Settings = chat_common::settings::load()?;
        if let Some(probe) = chat_common::healthcheck::requested() {
            let service = chat_proto::keyword_service_server::SERVICE_NAME;
            return chat_common::healthcheck::grpc_probe(&settings.keyword_listen, probe, service)
                .await;
        }
        let _telemetry = chat_common::telemetry::init("keyword");
        let arguments: Vec<String> = std::env::args().skip(1).collect();
        match arguments.first().map(String::as_str) {
            Some("reindex") => {
                let index = chat_keyword::connect(&settings).await?;
                let messages = index.reindex(arguments.get(1).map(String::as_str)).await?;
                println!("reindexed {messages} messages");
                Ok(())
            }
            Some(other) => {
                anyhow::bail!("unknown command {other:?}: healthcheck, ready or reindex [USER_ID]")
            }
            None => {
                let listener = chat_common::bind(&settings.keyword_listen).await?;
                chat_keyword::run(settings, listener, chat_common::shutdown_signal()).await
            }
        }
    };
    chat_common::exit_code("keyword", outcome.await)
}
