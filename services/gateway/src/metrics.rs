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
const STALE_AUTHENTICATIONS: &str = "gateway_stale_authentications_total";
const SETTLEMENTS_ABANDONED: &str = "gateway_settlements_abandoned_total";
const LIMITER_FALLBACK: &str = "gateway_rate_limiter_fallback";
const LIMITER_OUTAGES: &str = "gateway_rate_limiter_outages_total";
const SHED: &str = "gateway_requests_shed_total";
const STREAMS_OPEN: &str = "gateway_streams_open";
const RETRIEVALS: &str = "gateway_retrievals_total";

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
    counter!(STALE_AUTHENTICATIONS).increment(0);
    counter!(SETTLEMENTS_ABANDONED).increment(0);
    counter!(LIMITER_OUTAGES).increment(0);
    gauge!(LIMITER_FALLBACK).set(0.0);
    gauge!(STREAMS_OPEN).set(0.0);
    for outcome in Retrieval::ALL {
        counter!(RETRIEVALS, "outcome" => outcome.label()).increment(0);
    }
    for reason in Shed::ALL {
        counter!(SHED, "reason" => reason.label()).increment(0);
    }
}

/// 1 while Redis is away and this gateway limits on its own (`gateway_rate_limiter_fallback`).
pub fn rate_limiter_fallback(on: bool) {
    gauge!(LIMITER_FALLBACK).set(if on { 1.0 } else { 0.0 });
    if on {
        counter!(LIMITER_OUTAGES).increment(1);
    }
}

/// Why a request was shed at admission, the `reason` label of `gateway_requests_shed_total`.
#[derive(Debug, Clone, Copy)]
pub enum Shed {
    /// `MAX_CONCURRENT_REQUESTS` reached.
    Requests,
    /// `MAX_CONCURRENT_STREAMS` reached.
    Streams,
    /// The user's `MAX_STREAMS_PER_USER` reached.
    UserStreams,
}

impl Shed {
    const ALL: [Self; 3] = [Self::Requests, Self::Streams, Self::UserStreams];

    fn label(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Streams => "streams",
            Self::UserStreams => "user_streams",
        }
    }
}

pub fn shed(reason: Shed) {
    counter!(SHED, "reason" => reason.label()).increment(1);
}

/// Streams open on this gateway, moved by the admission permits.
pub fn streams_open(delta: f64) {
    gauge!(STREAMS_OPEN).increment(delta);
}

pub fn rate_limited() {
    counter!(RATE_LIMITED).increment(1);
}

pub fn stream_ended(outcome: StreamOutcome) {
    counter!(STREAMS, "outcome" => outcome.label()).increment(1);
}

/// A caller let in on what was known of them before, the accounts service failing.
pub fn stale_authentication() {
    counter!(STALE_AUTHENTICATIONS).increment(1);
}

pub fn reservation_dropped() {
    counter!(RESERVATIONS_DROPPED).increment(1);
}

/// A settlement the token service never took, however long it was retried: the
/// sweeper refunded its reservation, and the usage went uncharged.
pub fn settlement_abandoned() {
    counter!(SETTLEMENTS_ABANDONED).increment(1);
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

/// The method as a label: one of HTTP's own, or `_OTHER` (a client may send any token).
fn bounded_method(method: &str) -> &str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if KNOWN.contains(&method) {
        method
    } else {
        chat_common::observe::OTHER
    }
}

/// One finished HTTP request; `route` is the matched route, never the raw path (whose
/// number is unbounded).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("method", bounded_method(method).to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(elapsed);
}

/// How a chat's retrieval went, the `outcome` label of `gateway_retrievals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    /// The keyword service answered (with or without hits).
    Ok,
    /// It did not answer within `KEYWORD_TIMEOUT_MS`: the chat went on without it.
    Timeout,
    /// It failed or could not be reached: the chat went on without it.
    Error,
}

impl Retrieval {
    const ALL: [Self; 3] = [Self::Ok, Self::Timeout, Self::Error];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

pub fn retrieval(outcome: Retrieval) {
    counter!(RETRIEVALS, "outcome" => outcome.label()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_https_own_share_one_label() {
        assert_eq!(bounded_method("POST"), "POST");
        assert_eq!(bounded_method("PATCH"), "PATCH");
        assert_eq!(bounded_method("FOO123"), "_OTHER");
        assert_eq!(bounded_method("get"), "_OTHER");
    }
}
