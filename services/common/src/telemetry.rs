//! Logs and traces: JSON lines on stdout with the trace and span ids of the request
//! they belong to, and OpenTelemetry spans exported over OTLP/gRPC to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set. W3C trace context is the propagation
//! format. Exporting never blocks a request: spans are batched in the background and
//! dropped when the collector is down.

use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, propagation::TextMapCompositePropagator};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Flushes buffered spans when dropped: keep it alive for the whole of `main`.
#[must_use = "spans are flushed when the guard is dropped"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(3));
    }
}

/// Installs logging and tracing for `service`. Call once, first thing in `main`.
pub fn init(service: &'static str) -> Telemetry {
    global::set_text_map_propagator(TextMapCompositePropagator::new(vec![Box::new(
        TraceContextPropagator::new(),
    )]));
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .ok()
        .filter(|endpoint| !endpoint.trim().is_empty());
    let mut exporter_error = None;
    if let Some(endpoint) = &endpoint {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(3))
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(error) => exporter_error = Some(error.to_string()),
        }
    }
    // Without an exporter spans still get ids: logs and response headers carry them,
    // and they propagate to the next hop.
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The standard switch: no spans at all (no trace ids in logs or headers either).
    let traces_on =
        !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"));
    // RUST_LOG filters the log lines only: traces keep every info span whatever the
    // log level, so `RUST_LOG=warn` does not turn tracing off.
    let installed = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(if traces_on {
                    LevelFilter::INFO
                } else {
                    LevelFilter::OFF
                }),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .with_filter(filter),
        )
        .try_init();
    if installed.is_ok() {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            otlp_endpoint = endpoint.as_deref().unwrap_or("none"),
            "starting"
        );
        if let Some(error) = exporter_error {
            tracing::error!(%error, "cannot export traces; continuing without");
        }
    }
    Telemetry { provider }
}

/// Tracing for tests that run services in-process: real spans and trace ids (so trace
/// propagation and ids in responses work as in production), nothing exported, and only
/// warnings logged, through the test harness's capture. Safe to call many times.
pub fn init_for_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let tracer = provider.tracer("test");
        global::set_tracer_provider(provider);
        let _ = tracing_subscriber::registry()
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(LevelFilter::INFO),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLines)
                    .with_test_writer()
                    .with_filter(LevelFilter::WARN),
            )
            .try_init();
    });
}

/// One JSON object per line: timestamp, level, target, message, the event's fields,
/// the current span's name, and `trace_id`/`span_id` when inside a traced request.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            jiff::Timestamp::now().to_string().into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        event.record(&mut FieldsVisitor(&mut line));
        // The current span of the whole subscriber, not only the spans this layer's
        // filter lets through: a warning inside a request carries its trace id even
        // when RUST_LOG hides the request's info span.
        let current = tracing::Span::current();
        if let Some(span) = current.metadata() {
            line.insert("span".into(), span.name().into());
            let context = current.context();
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                line.insert(
                    "trace_id".into(),
                    span_context.trace_id().to_string().into(),
                );
                line.insert("span_id".into(), span_context.span_id().to_string().into());
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct FieldsVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// The trace id of the current span, when it has one.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
