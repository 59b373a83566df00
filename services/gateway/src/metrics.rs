//! Every metric the gateway exports, by name and label set, in one place. The gRPC
//! client metrics (`rpc_client_*`) come from the shared channel layer in
//! `chat_common::observe`.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

const HTTP_REQUESTS: &str = "http_server_requests_total";
const HTTP_DURATION: &str = "http_server_request_duration_seconds";
const HTTP_ACTIVE: &str = "http_server_active_requests";
const RATE_LIMITED: &str = "gateway_rate_limited_total";
const STREAMS: &str = "gateway_streams_total";
const RESERVATIONS_DROPPED: &str = "gateway_reservations_dropped_total";

/// How a `/chat/stream` ended, the `outcome` label of `gateway_streams_total`.
#[derive(Debug, Clone, Copy)]
pub enum StreamOutcome {
    Finished,
    ClientGone,
    Broken,
}

impl StreamOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::ClientGone => "client_gone",
            Self::Broken => "broken",
        }
    }
}

/// Series that only move on rare events exist from the start, at zero, so alerts and
/// dashboards see them before the first event.
pub fn describe() {
    counter!(RATE_LIMITED).increment(0);
    counter!(RESERVATIONS_DROPPED).increment(0);
}

pub fn rate_limited() {
    counter!(RATE_LIMITED).increment(1);
}

pub fn stream_ended(outcome: StreamOutcome) {
    counter!(STREAMS, "outcome" => outcome.label()).increment(1);
}

pub fn reservation_dropped() {
    counter!(RESERVATIONS_DROPPED).increment(1);
}

/// Counts one HTTP request in flight until the guard is dropped.
pub fn http_request_started() -> impl Drop {
    struct Active(metrics::Gauge);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }
    let active = gauge!(HTTP_ACTIVE);
    active.increment(1.0);
    Active(active)
}

/// One finished HTTP request; `route` is the matched route, never the raw path (whose
/// number is unbounded).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(elapsed);
}
