use super::server::{SERVER_METHODS, Served, server_labels};
use super::trace_context::parse_traceparent;
use super::*;
use opentelemetry::global;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[test]
fn server_labels_are_bounded_to_known_services_and_methods() {
    let known = chat_proto::filter_service_server::SERVICE_NAME;
    assert_eq!(
        server_labels(known, "Filter", tonic::Code::Ok),
        (known.to_owned(), "Filter".to_owned())
    );
    assert_eq!(
        server_labels(known, "Made1Up", tonic::Code::Unimplemented),
        (known.to_owned(), OTHER.to_owned())
    );
    assert_eq!(
        server_labels("evil.Service123", "Anything", tonic::Code::Unimplemented),
        (OTHER.to_owned(), OTHER.to_owned())
    );
    assert_eq!(
        service_and_method("/chat.v1.TokenService/Reserve"),
        ("chat.v1.TokenService", "Reserve")
    );
}

/// Only methods of ours are kept for their handles: a caller's made-up paths, of a
/// service we have or not, are labelled `_OTHER` and leave nothing behind.
#[test]
fn only_served_methods_of_ours_are_kept() {
    let ours = format!(
        "/{}/Filter",
        chat_proto::filter_service_server::SERVICE_NAME
    );
    let made_up = format!(
        "/{}/Made1Up",
        chat_proto::filter_service_server::SERVICE_NAME
    );
    let foreign = "/evil.Service123/Anything";
    Served::New(made_up.clone()).handles(tonic::Code::Unimplemented);
    Served::New(foreign.to_owned()).handles(tonic::Code::Unimplemented);
    Served::New(ours.clone()).handles(tonic::Code::Ok);
    assert!(SERVER_METHODS.find(&made_up).is_none());
    assert!(SERVER_METHODS.find(foreign).is_none());
    let kept = SERVER_METHODS
        .find(&ours)
        .map(|method| method.name.to_string());
    assert_eq!(kept.as_deref(), Some("chat.v1.FilterService/Filter"));
}

/// The trace context a client call sends is what the W3C propagator would write.
#[test]
fn the_injected_trace_context_is_the_w3c_propagators() {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    // A subscriber of this test's own: the telemetry tests install the global one.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let (ours, standard) = tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("a call");
        let mut ours = http::HeaderMap::new();
        inject_trace_context(&span, &mut ours);
        let mut standard = std::collections::HashMap::new();
        TraceContextPropagator::new().inject_context(&span.context(), &mut standard);
        (ours, standard)
    });
    let traceparent = ours
        .get("traceparent")
        .and_then(|value| value.to_str().ok());
    assert_eq!(traceparent, standard.get("traceparent").map(String::as_str));
    assert_eq!(traceparent.map(str::len), Some(55));
    assert!(ours.get("tracestate").is_none(), "no state, no header");
}

/// Every `traceparent` read directly is read as the W3C propagator reads it, and what it
/// does not read directly is left to the propagator.
#[test]
fn trace_context_is_read_as_the_w3c_propagator_reads_it() {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    global::set_text_map_propagator(TraceContextPropagator::new());
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let cases = [
        valid,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0af7651916cd43dd8448eb211c80319cb-7ad6b7169203331-01",
        "",
    ];
    for traceparent in cases {
        for tracestate in [None, Some("vendor=value")] {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", http::HeaderValue::from_static(traceparent));
            if let Some(state) = tracestate {
                headers.insert("tracestate", http::HeaderValue::from_static(state));
            }
            let ours = remote_parent(&headers);
            let reference = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
            assert_eq!(
                ours.span().span_context(),
                reference.span().span_context(),
                "{traceparent} {tracestate:?}"
            );
        }
    }
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", http::HeaderValue::from_static(valid));
    assert!(remote_parent(&headers).span().span_context().is_remote());
    assert!(
        parse_traceparent(valid.as_bytes()).is_some(),
        "read directly"
    );
}
