//! Prometheus metrics: one recorder per process, served as text by the exporter's own
//! HTTP listener on the service's metrics port (`<SERVICE>_METRICS_LISTEN`). Names follow
//! Prometheus conventions: base units, `_total` counters, `_seconds` histograms.
//!
//! The recorder needs its upkeep run regularly, scraped or not: until then histogram
//! samples pile up in memory. The exporter runs it when it serves the listener; without a
//! listener, a thread of ours does.

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets from 1 ms to 30 s: fine where gRPC hops live, coarse where LLM calls do.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's upkeep runs (the exporter's own default).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The installed recorder; `None` when another recorder took the global slot first.
static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Held while installing, so that `install` and `spawn_server` racing cannot both build
/// a recorder.
static INSTALLING: Mutex<()> = Mutex::new(());

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .upkeep_timeout(UPKEEP_INTERVAL)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
}

/// Installs the process-wide recorder without a listener (once; later calls reuse it),
/// with its upkeep on a thread of its own, so it runs whichever runtime comes and goes.
pub fn install() -> Option<&'static PrometheusHandle> {
    if let Some(installed) = HANDLE.get() {
        return installed.as_ref();
    }
    let _installing = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    HANDLE
        .get_or_init(|| match install_without_listener() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "cannot install the metrics recorder"
                );
                None
            }
        })
        .as_ref()
}

fn install_without_listener() -> anyhow::Result<PrometheusHandle> {
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .context("cannot start the metrics upkeep thread")?;
    Ok(handle)
}

/// The current metrics in Prometheus' text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// Installs the recorder and serves it on `listen` (`GET /metrics`; the exporter answers
/// on any path) in the background; an empty address serves nothing, but the recorder is
/// installed and kept up all the same. The first call in a process decides: a listener
/// cannot be added to a recorder installed without one.
pub async fn spawn_server(listen: &str) -> anyhow::Result<()> {
    let listen = listen.trim();
    if listen.is_empty() {
        install();
        return Ok(());
    }
    let cannot_listen = || format!("cannot listen on {listen}");
    let address = tokio::net::lookup_host(listen)
        .await
        .with_context(cannot_listen)?
        .next()
        .with_context(|| format!("{listen} resolves to no address"))?;
    let _installing = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    anyhow::ensure!(
        HANDLE.get().is_none(),
        "cannot serve metrics on {listen}: this process's recorder is already installed"
    );
    // Binds the listener (synchronously: a taken port fails here) and starts the upkeep.
    let (recorder, exporter) = builder()?
        .with_http_listener(address)
        .build()
        .with_context(cannot_listen)?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("cannot install the metrics recorder")?;
    let _ = HANDLE.set(Some(handle));
    tokio::spawn(async move {
        if let Err(error) = exporter.await {
            tracing::error!(?error, "metrics listener stopped");
        }
    });
    tracing::info!(local = %address, "metrics listening");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, as the recorder is one per process (no other test of this crate may
    /// install it): a taken port is an error naming it; then the listener serves what is
    /// recorded, with the latency buckets; a second listener is refused.
    #[tokio::test]
    async fn the_listener_serves_the_recorded_metrics_with_the_latency_buckets()
    -> anyhow::Result<()> {
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = taken.local_addr()?.to_string();
        let refused = spawn_server(&address)
            .await
            .map_err(|error| format!("{error:#}"));
        assert!(
            refused
                .as_ref()
                .is_err_and(|error| error.starts_with(&format!("cannot listen on {address}"))),
            "{refused:?}"
        );
        drop(taken);

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        spawn_server(&format!("127.0.0.1:{port}")).await?;
        metrics::counter!("test_requests_total", "outcome" => "ok").increment(2);
        metrics::histogram!("test_request_duration_seconds").record(0.003);

        let response = scrape(port).await?;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        for expected in [
            "test_requests_total{outcome=\"ok\"} 2",
            "test_request_duration_seconds_bucket{le=\"0.0025\"} 0",
            "test_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "test_request_duration_seconds_bucket{le=\"30\"} 1",
        ] {
            assert!(response.contains(expected), "no {expected} in {response}");
        }
        assert!(render().contains("test_requests_total"));

        let second = spawn_server("127.0.0.1:0").await;
        assert!(second.is_err(), "a second listener was started");
        Ok(())
    }

    async fn scrape(port: u16) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }
}
