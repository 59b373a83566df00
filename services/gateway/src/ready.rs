//! `GET /ready`: whether this gateway can serve chats now, apart from `GET /health`
//! (liveness: the process answers). Ready when the services a chat needs (token,
//! history, filter, llm) say they are ready on their gRPC health service, and the
//! gateway is not shutting down. The keyword service is reported but not required:
//! chats go on without retrieval.
//!
//! The answer is kept for [`FRESH_FOR`], so probes from many places cost the services
//! one round of checks a second at most.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Settings;
use crate::routes::AppState;

/// How long an answer is reused.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// How long a service may take to answer its health check.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// One service a chat goes through.
struct Dependency {
    name: &'static str,
    /// Its readiness entry: the full name of its gRPC service.
    service: &'static str,
    client: HealthClient<Channel>,
    /// Chats fail without it (else they go on without it).
    required: bool,
}

/// The result of one round of checks: each dependency's trouble, if any.
#[derive(Clone)]
struct Round {
    at: Instant,
    checks: Vec<(&'static str, bool, Result<(), String>)>,
}

impl Round {
    fn down(&self) -> Vec<&'static str> {
        self.checks
            .iter()
            .filter(|(_, required, outcome)| *required && outcome.is_err())
            .map(|(name, _, _)| *name)
            .collect()
    }
}

pub struct Readiness {
    dependencies: Vec<Dependency>,
    /// The last round; held while a round runs, so concurrent probes share it.
    last: tokio::sync::Mutex<Option<Round>>,
}

impl Readiness {
    /// Health clients of the services, on channels of their own (the chats' channels
    /// are not held up by probes, nor their metrics by health checks).
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let mut dependencies = Vec::new();
        let mut add = |name, service, addr: &str, required| -> anyhow::Result<()> {
            if !addr.is_empty() {
                dependencies.push(Dependency {
                    name,
                    service,
                    client: HealthClient::new(chat_common::grpc::lazy_channel(addr)?),
                    required,
                });
            }
            Ok(())
        };
        use chat_proto::{
            filter_service_server as filter, history_service_server as history,
            keyword_service_server as keyword, llm_service_server as llm,
            token_service_server as token,
        };
        add("token", token::SERVICE_NAME, &settings.token_addr, true)?;
        add(
            "history",
            history::SERVICE_NAME,
            &settings.history_addr,
            true,
        )?;
        add("filter", filter::SERVICE_NAME, &settings.filter_addr, true)?;
        add("llm", llm::SERVICE_NAME, &settings.llm_addr, true)?;
        add(
            "keyword",
            keyword::SERVICE_NAME,
            &settings.keyword_addr,
            false,
        )?;
        Ok(Self {
            dependencies,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The last round if it is fresh, else a new one.
    async fn round(&self) -> Round {
        let mut last = self.last.lock().await;
        if let Some(round) = last.as_ref()
            && round.at.elapsed() < FRESH_FOR
        {
            return round.clone();
        }
        let checks = self.dependencies.iter().map(|dependency| async move {
            (
                dependency.name,
                dependency.required,
                check(dependency.client.clone(), dependency.service).await,
            )
        });
        let round = Round {
            at: Instant::now(),
            checks: futures::future::join_all(checks).await,
        };
        *last = Some(round.clone());
        round
    }
}

/// Asks one service whether `service` is ready.
async fn check(mut client: HealthClient<Channel>, service: &str) -> Result<(), String> {
    let asked = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    match tokio::time::timeout(CHECK_TIMEOUT, asked).await {
        Err(_) => Err(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis())),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(answer)) => match answer.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            status => Err(format!("{status:?}")),
        },
    }
}

/// `GET /ready`: 200 `{"status": "ready", ...}`, or 503 naming what is down, or 503
/// `draining` once the gateway is shutting down.
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.stopping.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "draining",
                "error": "shutting down",
                "code": "draining",
                "detail": "this gateway is finishing its requests before it stops",
            })),
        )
            .into_response();
    }
    let round = state.readiness.round().await;
    let mut checks = Map::new();
    for (name, _, outcome) in &round.checks {
        let value = match outcome {
            Ok(()) => Value::from("ok"),
            Err(trouble) => Value::from(trouble.as_str()),
        };
        checks.insert((*name).to_owned(), value);
    }
    let down = round.down();
    if down.is_empty() {
        return Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "not_ready",
            "error": "not ready",
            "code": "not_ready",
            "detail": format!("not ready: {}", down.join(", ")),
            "down": down,
            "checks": checks,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::Backends;

    async fn get(app: &axum::Router, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty())?)
            .await?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await?;
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// Services nobody listens on (port 1 refuses at once): not ready, naming them, and
    /// draining once the shutdown begins; alive all along.
    #[tokio::test]
    async fn ready_names_the_services_down_and_turns_draining_while_health_stays_ok()
    -> anyhow::Result<()> {
        let nowhere = "http://127.0.0.1:1".to_owned();
        let settings = Settings {
            token_addr: nowhere.clone(),
            history_addr: nowhere.clone(),
            filter_addr: nowhere.clone(),
            llm_addr: nowhere.clone(),
            keyword_addr: String::new(),
            ..Settings::default()
        };
        let state = Arc::new(AppState::new(&settings, Backends::connect(&settings)?)?);
        let app = crate::routes::router(&settings, Arc::clone(&state));

        let (status, body) = get(&app, "/ready").await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "not_ready");
        assert_eq!(body["down"], json!(["token", "history", "filter", "llm"]));
        assert_eq!(get(&app, "/health").await?.0, StatusCode::OK);

        state.stopping.begin();
        let (status, body) = get(&app, "/ready").await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "draining");
        assert_eq!(get(&app, "/health").await?.0, StatusCode::OK, "still alive");
        Ok(())
    }
}
