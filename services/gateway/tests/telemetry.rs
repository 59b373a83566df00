//! Observability of the real binaries, each in its own process as in production:
//! one chat is one trace across all six services (received by an OTLP receiver built
//! on the official opentelemetry-proto definitions), an incoming `traceparent` is
//! continued, every metric the dashboards and alert rules use is served with the labels
//! they use, and a collector that goes away changes nothing for requests.
//!
//! Needs the service binaries: `cargo build --workspace --bins` (`make test` does it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_testing::stack::{self, Backing, Stack};
use chat_testing::{FakeOpenAi, TestDatabase, TestRedis};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use reqwest::StatusCode;
use serde_json::json;

const SERVICES: [&str; 6] = ["gateway", "filter", "token", "llm", "history", "keyword"];

/// A received span with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
}

#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|value| value.value.as_ref()) {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(number)) => number.to_string(),
        Some(AnyValue::BoolValue(flag)) => flag.to_string(),
        Some(AnyValue::DoubleValue(number)) => number.to_string(),
        _ => String::new(),
    }
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|pair| (pair.key.clone(), text(&pair.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.spans
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .map(|spans| {
                spans
                    .iter()
                    .filter(|span| span.trace_id == trace_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until spans of every service arrived for `trace_id`, then a little more
    /// for stragglers of the same batch.
    async fn wait_for_all_services(&self, trace_id: &str) -> Vec<Received> {
        for _ in 0..150 {
            let services: BTreeSet<String> = self
                .of_trace(trace_id)
                .into_iter()
                .map(|span| span.service)
                .collect();
            if SERVICES.iter().all(|service| services.contains(*service)) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.of_trace(trace_id)
    }
}

/// The six services as processes from the debug binaries beside the gateway's, each
/// exporting its spans to `collector`, and a client for them.
struct Processes {
    stack: Stack,
    http: reqwest::Client,
}

async fn start_processes(
    collector: &str,
    redis: &TestRedis,
    database: &TestDatabase,
    provider: &FakeOpenAi,
) -> anyhow::Result<Processes> {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_chat-gateway"));
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "warn"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("FILTER_TIMEOUT_MS", "5000"),
        ("TOKEN_TIMEOUT_MS", "5000"),
        ("HISTORY_TIMEOUT_MS", "5000"),
    ];
    let options = stack::Processes {
        bin_dir: gateway.parent().map(PathBuf::from).unwrap_or_default(),
        gateways: 1,
        env: env
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
    };
    let stack = Stack::processes(&Backing::of(redis, database, provider), &options).await?;
    Ok(Processes {
        stack,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()?,
    })
}

impl Processes {
    async fn chat(&self, traceparent: Option<&str>) -> anyhow::Result<String> {
        let mut request = self
            .http
            .post(format!("{}/chat", self.stack.gateway()))
            .json(&json!({"user_id": "u1", "text": "hello there"}));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "chat: {}",
            response.status()
        );
        let trace_id = response
            .headers()
            .get("x-trace-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no x-trace-id header"))?;
        Ok(trace_id)
    }

    /// Metric name → every label name seen on it, over all six services.
    async fn scrape(&self) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (service, url) in &self.stack.metrics {
            let body = self.http.get(url).send().await?.text().await?;
            anyhow::ensure!(body.contains("_total"), "{service} served no metrics");
            for line in body
                .lines()
                .filter(|line| !line.starts_with('#') && !line.is_empty())
            {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let labels = seen.entry(line[..name_end].to_owned()).or_default();
                if let Some(inner) = line
                    .get(name_end + 1..)
                    .filter(|_| line[name_end..].starts_with('{'))
                {
                    let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                    for pair in inner.split("\",") {
                        if let Some((key, _)) = pair.split_once('=') {
                            labels.insert(key.trim().to_owned());
                        }
                    }
                }
            }
        }
        Ok(seen)
    }
}

#[tokio::test]
async fn one_chat_is_one_trace_across_every_service_and_every_dashboard_metric_exists()
-> anyhow::Result<()> {
    let receiver = Receiver::default();
    let collector_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector = format!("http://{}", collector_listener.local_addr()?);
    let collector_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                collector_listener,
            )),
    );
    let (redis, database, provider) = (
        TestRedis::new().await?,
        TestDatabase::new().await?,
        FakeOpenAi::start().await?,
    );
    let processes = start_processes(&collector, &redis, &database, &provider).await?;

    // A chat without trace context starts a trace of its own...
    let trace_id = processes.chat(None).await?;
    let spans = receiver.wait_for_all_services(&trace_id).await;
    let services: BTreeSet<&str> = spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(services, SERVICES.into_iter().collect(), "{spans:#?}");
    // ...with one root, the gateway's HTTP server span, and every other span linked to
    // a parent in the same trace.
    let roots: Vec<&Received> = spans
        .iter()
        .filter(|span| span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    assert_eq!(
        (roots[0].service.as_str(), roots[0].name.as_str()),
        ("gateway", "POST /chat")
    );
    assert_eq!(roots[0].kind, SpanKind::Server as i32);
    assert_eq!(
        roots[0]
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let ids: BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    for span in &spans {
        assert!(
            span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_str()),
            "orphan {span:#?}"
        );
    }
    // Each service's server span is the child of a gateway client span for that call.
    let by_id: BTreeMap<&str, &Received> = spans
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    for service in ["filter", "token", "llm", "history", "keyword"] {
        let servers: Vec<&Received> = spans
            .iter()
            .filter(|span| span.service == service && span.kind == SpanKind::Server as i32)
            .collect();
        assert!(!servers.is_empty(), "no server span from {service}");
        for server in servers {
            let parent = by_id.get(server.parent_span_id.as_str());
            assert!(
                parent.is_some_and(|parent| parent.service == "gateway"
                    && parent.kind == SpanKind::Client as i32
                    && parent.name == server.name),
                "{service} server span {} has parent {parent:?}",
                server.name
            );
            assert_eq!(
                server.attributes.get("rpc.system").map(String::as_str),
                Some("grpc")
            );
        }
    }
    let llm = spans
        .iter()
        .find(|span| span.attributes.contains_key("gen_ai.operation.name"))
        .ok_or_else(|| anyhow::anyhow!("no gen_ai span"))?;
    assert_eq!(llm.service, "llm");
    assert_eq!(
        llm.attributes
            .get("gen_ai.request.model")
            .map(String::as_str),
        Some("gpt-test")
    );
    assert_eq!(
        llm.attributes
            .get("gen_ai.response.model")
            .map(String::as_str),
        Some("gpt-test")
    );
    for key in ["gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"] {
        let tokens: i64 = llm
            .attributes
            .get(key)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        assert!(tokens > 0, "{key} in {llm:#?}");
    }
    let databases: BTreeSet<(&str, &str)> = spans
        .iter()
        .filter_map(|span| {
            Some((
                span.service.as_str(),
                span.attributes.get("db.system.name")?.as_str(),
            ))
        })
        .collect();
    // Retrieval ran beside the filter and the context, and says what it found.
    let retrieval = spans
        .iter()
        .find(|span| span.service == "gateway" && span.name == "retrieval")
        .ok_or_else(|| anyhow::anyhow!("no retrieval span in {spans:#?}"))?;
    assert_eq!(
        retrieval.attributes.get("outcome").map(String::as_str),
        Some("ok")
    );
    assert!(retrieval.attributes.contains_key("found"), "{retrieval:#?}");
    for expected in [
        ("token", "redis"),
        ("history", "mysql"),
        ("history", "redis"),
        ("keyword", "mysql"),
    ] {
        assert!(
            databases.contains(&expected),
            "no {expected:?} span in {databases:?}"
        );
    }

    // An incoming traceparent is continued, not replaced.
    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_parent = "00f067aa0ba902b7";
    let continued = processes
        .chat(Some(&format!("00-{incoming_trace}-{incoming_parent}-01")))
        .await?;
    assert_eq!(continued, incoming_trace);
    let spans = receiver.wait_for_all_services(incoming_trace).await;
    let gateway_root = spans
        .iter()
        .find(|span| span.service == "gateway" && span.kind == SpanKind::Server as i32)
        .ok_or_else(|| anyhow::anyhow!("no gateway server span in the continued trace"))?;
    assert_eq!(gateway_root.parent_span_id, incoming_parent);
    assert_eq!(
        spans
            .iter()
            .map(|span| span.service.as_str())
            .collect::<BTreeSet<_>>(),
        SERVICES.into_iter().collect()
    );

    // Every metric the dashboards and alert rules query is served, with the labels
    // the queries use.
    let response = processes
        .http
        .post(format!("{}/chat", processes.stack.gateway()))
        .json(&json!({"user_id": "u1", "text": "foo bar"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let served = processes.scrape().await?;
    let mut checked = 0;
    for (source, expression) in queried_expressions()? {
        for (metric, labels) in referenced(&expression) {
            let Some(present) = served.get(&metric) else {
                panic!("{source}: {metric} is not served by any service (query: {expression})");
            };
            for label in labels {
                assert!(
                    present.contains(&label),
                    "{source}: {metric} has no label {label:?} (has {present:?})"
                );
            }
            checked += 1;
        }
        for label in grouping_labels(&expression) {
            let carried = referenced(&expression).iter().any(|(metric, _)| {
                served
                    .get(metric)
                    .is_some_and(|labels| labels.contains(&label))
            });
            assert!(
                carried,
                "{source}: no metric in {expression} carries the label {label:?}"
            );
        }
    }
    assert!(checked > 40, "only {checked} metric references found");

    // The collector goes away: requests go on, promptly.
    collector_task.abort();
    let _ = collector_task.await;
    for _ in 0..3 {
        processes.chat(None).await?;
    }
    drop(processes);
    Ok(())
}

/// Every PromQL expression in the dashboards and alert rules, with where it came from.
fn queried_expressions() -> anyhow::Result<Vec<(String, String)>> {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut expressions = Vec::new();
    for entry in std::fs::read_dir(deploy.join("grafana/dashboards"))? {
        let path = entry?.path();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        collect_exprs(&dashboard, &path.display().to_string(), &mut expressions);
    }
    for entry in std::fs::read_dir(deploy.join("prometheus/rules"))? {
        let path = entry?.path();
        let rules = std::fs::read_to_string(&path)?;
        // Each rule's expression runs from `expr:` to the next key of the rule.
        for chunk in rules.split("expr:").skip(1) {
            let expression = chunk
                .lines()
                .take_while(|line| {
                    !line.trim_start().starts_with("for:")
                        && !line.trim_start().starts_with("labels:")
                })
                .collect::<Vec<_>>()
                .join(" ");
            expressions.push((path.display().to_string(), expression.replace('|', " ")));
        }
    }
    anyhow::ensure!(
        expressions.len() > 20,
        "found only {} expressions",
        expressions.len()
    );
    Ok(expressions)
}

fn collect_exprs(value: &serde_json::Value, source: &str, into: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("expr", Some(expression)) => {
                        into.push((source.to_owned(), expression.to_owned()))
                    }
                    _ => collect_exprs(value, source, into),
                }
            }
        }
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|item| collect_exprs(item, source, into)),
        _ => {}
    }
}

/// Labels added by Prometheus at scrape time, not served by the services.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Our metrics referenced in `expression`, with the label names their selectors use.
fn referenced(expression: &str) -> Vec<(String, BTreeSet<String>)> {
    let metric = regex::Regex::new(
        r"\b((?:http_server|rpc_server|rpc_client|llm|quota|gateway|history|accounts|keyword|db_client)_[a-z0-9_]+)(\{[^}]*\})?",
    );
    let matcher = regex::Regex::new(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)");
    let (Ok(metric), Ok(matcher)) = (metric, matcher) else {
        return Vec::new();
    };
    metric
        .captures_iter(expression)
        .map(|captures| {
            let labels = captures
                .get(2)
                .map(|selector| {
                    matcher
                        .captures_iter(selector.as_str())
                        .map(|label| label[1].to_owned())
                        .filter(|label| !TARGET_LABELS.contains(&label.as_str()))
                        .collect()
                })
                .unwrap_or_default();
            (captures[1].to_owned(), labels)
        })
        .collect()
}

/// Label names in `by (...)` clauses, less those Prometheus adds itself.
fn grouping_labels(expression: &str) -> BTreeSet<String> {
    let Ok(by) = regex::Regex::new(r"\bby\s*\(([^)]*)\)") else {
        return BTreeSet::new();
    };
    by.captures_iter(expression)
        .flat_map(|captures| {
            captures[1]
                .split(',')
                .map(|label| label.trim().to_owned())
                .filter(|label| !label.is_empty() && !TARGET_LABELS.contains(&label.as_str()))
                .collect::<Vec<_>>()
        })
        .collect()
}
