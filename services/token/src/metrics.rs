//! Every series the token service records itself, with its labels. The Grafana
//! dashboard and the Prometheus rules in `deploy/` query these names: rename nothing
//! here without them. Redis calls are timed by `chat_common::observe::db`.

use ::metrics::counter;

const RESERVATIONS: &str = "quota_reservations_total";
const SETTLEMENTS: &str = "quota_settlements_total";
const REFUNDS: &str = "quota_refunds_total";
const STORE_ERRORS: &str = "quota_store_errors_total";
const EXTENSIONS: &str = "quota_extensions_total";
const JOURNAL_REPLAYED: &str = "quota_journal_replayed_total";

const GRANTED: &str = "granted";
const REJECTED: &str = "rejected";
const SETTLED: &str = "settled";
const UNKNOWN: &str = "unknown";
/// Settled after the sweeper had refunded it: charged from its tombstone.
const LATE: &str = "late";
/// Redis was away: journalled, applied later.
const QUEUED: &str = "queued";
const EXTENDED: &str = "extended";
const CLOSED: &str = "closed";
const FAILED_CALL: &str = "failed_call";
const ABANDONED: &str = "abandoned";

/// The `system` label of this service's `db_client_*` series.
pub const REDIS: &str = "redis";

/// Creates the series that only move on rare events at zero, so dashboards and alerts
/// see them before the first event.
pub fn register() {
    for result in [GRANTED, REJECTED] {
        counter!(RESERVATIONS, "result" => result).increment(0);
    }
    for result in [SETTLED, UNKNOWN, LATE, QUEUED] {
        counter!(SETTLEMENTS, "result" => result).increment(0);
    }
    for result in [EXTENDED, CLOSED] {
        counter!(EXTENSIONS, "result" => result).increment(0);
    }
    counter!(JOURNAL_REPLAYED).increment(0);
    for reason in [FAILED_CALL, ABANDONED] {
        counter!(REFUNDS, "reason" => reason).increment(0);
    }
    counter!(STORE_ERRORS).increment(0);
}

pub fn reservation(granted: bool) {
    let result = if granted { GRANTED } else { REJECTED };
    counter!(RESERVATIONS, "result" => result).increment(1);
}

/// `settled` is false for a reservation unknown or already settled (a retry).
pub fn settlement(settled: bool) {
    let result = if settled { SETTLED } else { UNKNOWN };
    counter!(SETTLEMENTS, "result" => result).increment(1);
}

/// A settlement to zero: the chat failed and its reservation went back.
pub fn failed_call_refunded() {
    counter!(REFUNDS, "reason" => FAILED_CALL).increment(1);
}

/// Reservations the sweeper refunded because nobody settled them.
pub fn abandoned_refunded(count: u64) {
    counter!(REFUNDS, "reason" => ABANDONED).increment(count);
}

pub fn store_error() {
    counter!(STORE_ERRORS).increment(1);
}

/// A settlement that came after the sweeper refunded its reservation.
pub fn settlement_late() {
    counter!(SETTLEMENTS, "result" => LATE).increment(1);
}

/// A settlement journalled because Redis could not take it.
pub fn settlement_queued() {
    counter!(SETTLEMENTS, "result" => QUEUED).increment(1);
}

/// Journalled settlements applied in Redis.
pub fn journal_replayed(count: usize) {
    counter!(JOURNAL_REPLAYED).increment(count as u64);
}

/// `extended` is false for a reservation no longer open.
pub fn extension(extended: bool) {
    let result = if extended { EXTENDED } else { CLOSED };
    counter!(EXTENSIONS, "result" => result).increment(1);
}
