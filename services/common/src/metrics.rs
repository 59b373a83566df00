//! Prometheus metrics: one recorder per process, served as text on the service's own
//! metrics port (`<SERVICE>_METRICS_LISTEN`). Names follow Prometheus conventions:
//! base units, `_total` counters, `_seconds` histograms.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets from 1 ms to 30 s: fine where gRPC hops live, coarse where LLM calls do.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(|builder| builder.install_recorder());
            match recorder {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::error!(%error, "cannot install the metrics recorder");
                    None
                }
            }
        })
        .as_ref()
}

/// The current metrics in Prometheus' text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

/// Serves `GET /metrics` on `listen` in the background; an empty address turns it off.
pub async fn spawn_server(listen: &str) -> anyhow::Result<()> {
    install();
    if listen.trim().is_empty() {
        return Ok(());
    }
    let listener = crate::bind(listen).await?;
    tracing::info!(local = %listener.local_addr()?, "metrics listening");
    tokio::spawn(serve(listener));
    Ok(())
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                render(),
            )
        }),
    );
    if let Err(error) = axum::serve(listener, app).await {
        tracing::error!(%error, "metrics server stopped");
    }
}
