//! `chat-<service> healthcheck` and `chat-<service> ready`: ask the running service
//! itself whether it is alive (liveness: the process serves) or ready (readiness: its
//! dependencies answer and it is not shutting down), so a container image needs no curl
//! or grpc_health_probe. Exit 0 when it is.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TIMEOUT: Duration = Duration::from_secs(2);

/// What a probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `healthcheck`: is the process serving at all?
    Live,
    /// `ready`: can it do its work now?
    Ready,
}

/// The probe the first argument asks for (`healthcheck` or `ready`), if any.
pub fn requested() -> Option<Probe> {
    match std::env::args().nth(1).as_deref() {
        Some("healthcheck") => Some(Probe::Live),
        Some("ready") => Some(Probe::Ready),
        _ => None,
    }
}

/// Answers `probe` of the gRPC service listening on `listen` whose readiness entry is
/// `service` (its full gRPC name).
pub async fn grpc_probe(listen: &str, probe: Probe, service: &str) -> anyhow::Result<()> {
    match probe {
        Probe::Live => grpc(listen).await,
        Probe::Ready => grpc_service(listen, service).await,
    }
}

/// Answers `probe` of the HTTP server listening on `listen`: `GET /health` or `GET /ready`.
pub async fn http_probe(listen: &str, probe: Probe) -> anyhow::Result<()> {
    match probe {
        Probe::Live => http(listen, "/health").await,
        Probe::Ready => http(listen, "/ready").await,
    }
}

/// The address to dial for a listen address: a wildcard host becomes loopback.
fn local_target(listen: &str) -> String {
    let port = listen.rsplit(':').next().unwrap_or(listen);
    format!("127.0.0.1:{port}")
}

/// Asks the gRPC health service listening on `listen` (the service's own listen
/// address) for its overall status: liveness.
pub async fn grpc(listen: &str) -> anyhow::Result<()> {
    grpc_service(listen, "").await
}

/// Asks the gRPC health service listening on `listen` for the status of `service`
/// (empty: the overall status).
pub async fn grpc_service(listen: &str, service: &str) -> anyhow::Result<()> {
    let channel = crate::grpc::lazy_channel(&local_target(listen))?;
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        TIMEOUT,
        client.check(HealthCheckRequest {
            service: service.to_owned(),
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
