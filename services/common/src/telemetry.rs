//! Logs and traces: JSON lines on stdout with the trace and span ids of the request
//! they belong to, and OpenTelemetry spans exported over OTLP/gRPC to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set. W3C trace context is the propagation
//! format. Exporting never blocks a request: spans are batched in the background and
//! dropped when the collector is down.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, propagation::TextMapCompositePropagator};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::Arc;

use tracing::subscriber::Interest;
use tracing::{Level, Metadata, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, FilterFn, LevelFilter, filter_fn};
use tracing_subscriber::fmt::{MakeWriter, TestWriter};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
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
    let dynamic = std::env::var("RUST_LOG").is_ok_and(|directives| directives.contains('['));
    let installed = install(tracer, traces_on, filter, dynamic, std::io::stdout);
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

/// Installs the process's subscriber: OpenTelemetry spans (every info span, when
/// `traces_on`) and JSON log lines (the events `logs` lets through).
///
/// RUST_LOG filters the log lines only: traces keep every info span whatever the log
/// level, so `RUST_LOG=warn` does not turn tracing off. No busy/idle time and thread
/// attributes on spans: timing every poll of every span showed in the profiles, and a
/// span's start and end already say how long it took. No OpenTelemetry context made
/// current on every poll either: nothing here reads `opentelemetry::Context::current()`
/// (propagation and log lines take the context from the tracing span). No source
/// location or target: most spans are made by the `observe` helpers, so they would name
/// the helper, not the work.
///
/// One filter decides for the whole subscriber ([`Gate`]), and the log lines see events
/// only ([`EventsOnly`]): with a filter per layer, every span's every enter, exit and
/// close looked the span up once more per layer to read which layers it was enabled
/// for (4 % of the gateway's instructions). A `RUST_LOG` with span directives (`[...]`)
/// needs the per-layer filters to see spans, and gets them (`dynamic`); the one
/// difference in the fast composition: at `RUST_LOG=debug`, debug events inside a span
/// are span events in its trace too, as info events always are.
fn install<W>(
    tracer: opentelemetry_sdk::trace::SdkTracer,
    traces_on: bool,
    logs: EnvFilter,
    dynamic: bool,
    make_writer: W,
) -> Result<(), TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fn otel<S: Subscriber + for<'a> LookupSpan<'a>>(
        tracer: opentelemetry_sdk::trace::SdkTracer,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer> {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_context_activation(false)
            .with_location(false)
            .with_target(false)
    }
    if dynamic {
        let traces = if traces_on {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        };
        return tracing_subscriber::registry()
            .with(otel(tracer).with_filter(traces))
            .with(json_lines(make_writer).with_filter(logs.and(events_only())))
            .try_init();
    }
    // Layered directly on the registry, not boxed: a boxed stack of layers hides from
    // tracing-subscriber that it has no per-layer filter, and it then asks `enabled` of
    // every disabled trace-level callsite (h2's), on every use.
    let logs = Arc::new(logs);
    tracing_subscriber::registry()
        .with(Gate {
            traces_on,
            logs: Arc::clone(&logs),
        })
        .with(otel(tracer))
        .with(EventsOnly {
            inner: json_lines(make_writer),
            logs,
        })
        .try_init()
}

/// The subscriber's one filter (see [`layers`]): spans and events at info and above
/// when traces are on, and the events `logs` lets through.
struct Gate {
    traces_on: bool,
    logs: Arc<EnvFilter>,
}

impl Gate {
    fn traced(&self, metadata: &Metadata<'_>) -> bool {
        self.traces_on && *metadata.level() <= Level::INFO
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Gate {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.traced(metadata) {
            Interest::always()
        } else if metadata.is_span() {
            Interest::never()
        } else {
            Layer::<S>::register_callsite(&*self.logs, metadata)
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, cx: LayerContext<'_, S>) -> bool {
        self.traced(metadata) || (metadata.is_event() && self.logs.enabled(metadata, cx))
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let traces = if self.traces_on {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        };
        Some(traces.max(self.logs.max_level_hint().unwrap_or(LevelFilter::TRACE)))
    }
}

/// A layer that sees events only, those `logs` lets through: the JSON lines, which
/// write no span fields (the span and trace ids come from the current span).
struct EventsOnly<L> {
    inner: L,
    logs: Arc<EnvFilter>,
}

impl<S: Subscriber + for<'a> LookupSpan<'a>, L: Layer<S>> Layer<S> for EventsOnly<L> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn on_event(&self, event: &tracing::Event<'_>, cx: LayerContext<'_, S>) {
        if self.logs.enabled(event.metadata(), cx.clone()) {
            self.inner.on_event(event, cx);
        }
    }
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
            .with(json_lines(TestWriter::new()).with_filter(LevelFilter::WARN.and(events_only())))
            .try_init();
    });
}

/// One JSON object per line, in tracing-subscriber's `json` schema (json-subscriber's
/// layer: `timestamp`, `level`, `target`, the event's fields with `message` at the top
/// level), plus the current span's name and the `trace_id`/`span_id` of the request.
/// tracing-subscriber's own JSON formatter has no place for fields of our own, and
/// json-subscriber's `with_opentelemetry_ids` nests them under another key and sees only
/// the spans this layer's filter lets through.
fn json_lines<S, W>(make_writer: W) -> json_subscriber::fmt::Layer<S, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    let mut layer = json_subscriber::fmt::layer()
        .with_writer(make_writer)
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false);
    layer
        .inner_layer_mut()
        .add_multiple_dynamic_fields(|_, _, fields| {
            // The current span of the whole subscriber, not only the spans this layer's
            // filter lets through: a warning inside a request carries its trace id even
            // when RUST_LOG hides the request's info span.
            let current = tracing::Span::current();
            let Some(span) = current.metadata() else {
                return;
            };
            let _ = fields.write_field("span", span.name());
            let context = current.context();
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                let _ = fields.write_field("trace_id", span_context.trace_id().to_string());
                let _ = fields.write_field("span_id", span_context.span_id().to_string());
            }
        });
    layer
}

/// Lets the JSON lines layer see events only. It writes no span fields, but a span it
/// sees is still formatted to JSON when it opens and again at every field recorded
/// later: work on every request for nothing (the profiles showed it).
fn events_only() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|metadata| metadata.is_event())
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    use serde_json::Value;

    use super::*;

    /// Every line written, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The lines this module's tests wrote (other tests may log through the same
        /// global subscriber).
        fn lines(&self) -> Vec<Value> {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or(Value::String(line.into())))
                .filter(|line| line["target"] == module_path!())
                .collect()
        }
    }

    #[test]
    fn lines_have_their_fields_and_inside_a_request_its_ids_even_if_its_span_is_not_logged()
    -> Result<(), String> {
        let provider = SdkTracerProvider::builder().build();
        let captured = Captured::default();
        let writer = captured.clone();
        // As in production with RUST_LOG=warn: the request's info span is traced, not
        // logged. Installed globally, as in production: the ids come from the process's
        // current span, which a scoped dispatcher (`with_default`) hides from code running
        // inside an event. No other test of this crate installs a subscriber.
        install(
            provider.tracer("test"),
            true,
            EnvFilter::new("warn"),
            false,
            move || writer.clone(),
        )
        .map_err(|error| error.to_string())?;
        tracing::warn!(attempt = 2, "outside any request");
        let (trace_id, span_id) = {
            let request = tracing::info_span!("request", user_id = "u1");
            let _entered = request.enter();
            tracing::warn!(user_id = "u1", tokens = 12_u64, "quota nearly spent");
            tracing::info!("not logged at warn");
            let context = request.context();
            let span_context = context.span().span_context().clone();
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        };

        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let outside = &lines[0];
        assert_eq!(outside["level"], "WARN");
        assert_eq!(outside["message"], "outside any request");
        assert_eq!(outside["attempt"], 2);
        assert!(outside["timestamp"].is_string(), "{outside}");
        assert!(outside["target"].is_string(), "{outside}");
        assert!(outside.get("trace_id").is_none(), "{outside}");

        let inside = &lines[1];
        assert_eq!(inside["message"], "quota nearly spent");
        assert_eq!(inside["user_id"], "u1");
        assert_eq!(inside["tokens"], 12);
        assert_eq!(inside["span"], "request", "{inside}");
        assert_eq!(inside["trace_id"], trace_id.as_str());
        assert_eq!(inside["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        Ok(())
    }
}
