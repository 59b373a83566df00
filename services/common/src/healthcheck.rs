//! `chat-<service> healthcheck`: asks the running service itself whether it is healthy,
//! so a container image needs no curl or grpc_health_probe. Exit 0 when healthy.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(2);

/// True when the first argument is `healthcheck`.
pub fn requested() -> bool {
    std::env::args().nth(1).as_deref() == Some("healthcheck")
}

/// The address to dial for a listen address: a wildcard host becomes loopback.
fn local_target(listen: &str) -> String {
    let port = listen.rsplit(':').next().unwrap_or(listen);
    format!("127.0.0.1:{port}")
}

/// Asks the gRPC health service listening on `listen` (the service's own listen address).
pub async fn grpc(listen: &str) -> anyhow::Result<()> {
    let channel = crate::grpc::lazy_channel(&local_target(listen))?;
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        TIMEOUT,
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))??;
    let status = answer.into_inner().status();
    anyhow::ensure!(status == ServingStatus::Serving, "status {status:?}");
    Ok(())
}

/// GETs `path` from the HTTP server listening on `listen`; healthy on a 200.
pub async fn http(listen: &str, path: &str) -> anyhow::Result<()> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(local_target(listen)).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {TIMEOUT:?}"))??;
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(status_line.contains(" 200 "), "answered {status_line:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_dialled_on_loopback() {
        assert_eq!(local_target("0.0.0.0:50051"), "127.0.0.1:50051");
        assert_eq!(local_target("[::]:8080"), "127.0.0.1:8080");
    }
}
