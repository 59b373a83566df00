//! Readiness of a gRPC service, apart from its liveness.
//!
//! The standard health service answers two questions: its overall status (the empty
//! service name) is *liveness*, SERVING while the process runs, so an orchestrator
//! restarts only a process that is stuck; the entry of each gRPC service the process
//! serves (`chat.v1.TokenService`, ...) is *readiness*, SERVING while the service's own
//! dependencies answer and the process is not draining. A Redis outage makes the token
//! service unready, never dead: restarting it would not bring Redis back.

use std::future::Future;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::shutdown::Shutdown;

/// How often the dependencies are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one round of checks may take before it counts as a failure.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Sets the readiness entries of `services` NOT_SERVING, then keeps them up to date in
/// the background: SERVING while `check` passes (it answers what is down otherwise),
/// NOT_SERVING from the moment `shutdown` begins to drain, for good. Changes are logged.
pub async fn spawn<F, Fut>(
    reporter: HealthReporter,
    services: &[&'static str],
    shutdown: Shutdown,
    check: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let services = services.to_vec();
    for service in &services {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(async move {
        let mut was_ready: Option<bool> = None;
        loop {
            let outcome = if shutdown.is_draining() {
                Err("draining".to_owned())
            } else {
                tokio::time::timeout(CHECK_TIMEOUT, check())
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the checks took over {} ms",
                            CHECK_TIMEOUT.as_millis()
                        ))
                    })
            };
            let ready = outcome.is_ok();
            if was_ready != Some(ready) {
                match &outcome {
                    Ok(()) => tracing::info!("ready"),
                    Err(down) => tracing::warn!(down = %down, "not ready"),
                }
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in &services {
                    reporter.set_service_status(service, status).await;
                }
                was_ready = Some(ready);
            }
            if shutdown.is_draining() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
                () = shutdown.draining() => {}
            }
        }
    })
}

/// PINGs the Redis behind `pool`; what failed otherwise.
pub async fn redis_ping(pool: &crate::redis::Pool) -> Result<(), String> {
    let mut connection = pool
        .get()
        .await
        .map_err(|error| format!("redis: {error}"))?;
    redis::cmd("PING")
        .query_async::<String>(&mut connection)
        .await
        .map(|_| ())
        .map_err(|error| format!("redis: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health;

    async fn status_of(
        health: &impl Health,
        service: &str,
    ) -> Result<tonic_health::pb::health_check_response::ServingStatus, tonic::Status> {
        let answer = health
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            }))
            .await?;
        Ok(answer.into_inner().status())
    }

    #[tokio::test]
    async fn readiness_follows_the_check_and_ends_with_the_drain_while_liveness_stays()
    -> anyhow::Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        let (reporter, _server) = crate::grpc::health();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let up = Arc::new(AtomicBool::new(true));
        let shutdown = Shutdown::new(5);
        let checked = up.clone();
        let task = spawn(reporter, &["test.Service"], shutdown.clone(), move || {
            let up = checked.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("redis: down".to_owned())
                }
            }
        })
        .await;
        let wait_for = |wanted: Wire| {
            let health = &health;
            async move {
                for _ in 0..100 {
                    if status_of(health, "test.Service").await? == wanted {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                anyhow::bail!("readiness never became {wanted:?}")
            }
        };
        wait_for(Wire::Serving).await?;
        up.store(false, Ordering::SeqCst);
        wait_for(Wire::NotServing).await?;
        assert_eq!(status_of(&health, "").await?, Wire::Serving, "alive");
        up.store(true, Ordering::SeqCst);
        wait_for(Wire::Serving).await?;
        shutdown.begin();
        wait_for(Wire::NotServing).await?;
        task.await?;
        assert_eq!(status_of(&health, "").await?, Wire::Serving, "still alive");
        Ok(())
    }
}
