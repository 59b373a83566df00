//! Every series the history service records itself, with its labels. The Grafana
//! dashboard and the Prometheus rules in `deploy/` query these names: rename nothing
//! here without them. MySQL and Redis calls are timed by `chat_common::observe::db`,
//! under the `system` labels below.

use ::metrics::{counter, gauge, histogram};

const CACHE_REQUESTS: &str = "history_cache_requests_total";
const WRITE_BATCH_SIZE: &str = "history_write_batch_size";
const LOGINS: &str = "accounts_logins_total";
const AUTHENTICATIONS: &str = "accounts_authentications_total";
const SESSION_CHECKS: &str = "accounts_session_checks_total";
const OUTBOX_QUEUED: &str = "history_outbox_queued_total";
const OUTBOX_DRAINED: &str = "history_outbox_drained_total";
const OUTBOX_USERS: &str = "history_outbox_users";
const MYSQL_BREAKER: &str = "history_mysql_breaker_open";

/// The `system` labels of this service's `db_client_*` series.
pub const MYSQL: &str = "mysql";
pub const REDIS: &str = "redis";

/// How a `List` was answered, the `result` label of `history_cache_requests_total`.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    /// More messages asked for than the cache holds: read from MySQL directly.
    Bypass,
    /// The cache failed; MySQL answered instead.
    Error,
}

impl CacheResult {
    const ALL: [Self; 4] = [Self::Hit, Self::Miss, Self::Bypass, Self::Error];

    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
            Self::Error => "error",
        }
    }
}

/// How a login ended, the `outcome` label of `accounts_logins_total`.
#[derive(Debug, Clone, Copy)]
pub enum LoginOutcome {
    Ok,
    /// Wrong password, unknown user, no password set, or disabled user.
    Refused,
    /// Too many failures for the account or the address: refused unchecked.
    LockedOut,
}

impl LoginOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::Refused, Self::LockedOut];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::LockedOut => "locked_out",
        }
    }
}

/// How an API key check ended, the `outcome` label of `accounts_authentications_total`.
/// The caller hears one message whatever the case; operators see which here.
#[derive(Debug, Clone, Copy)]
pub enum AuthOutcome {
    Ok,
    /// Not of the `sk-chat-<id>-<secret>` shape.
    Malformed,
    /// No such key id, or the secret does not match.
    Unknown,
    Revoked,
    /// The key's user is disabled.
    Disabled,
}

impl AuthOutcome {
    const ALL: [Self; 5] = [
        Self::Ok,
        Self::Malformed,
        Self::Unknown,
        Self::Revoked,
        Self::Disabled,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Revoked => "revoked",
            Self::Disabled => "disabled",
        }
    }
}

/// Creates the series that only move on rare events at zero, so dashboards and alerts
/// see them before the first event.
pub fn register() {
    for result in CacheResult::ALL {
        counter!(CACHE_REQUESTS, "result" => result.label()).increment(0);
    }
    for outcome in LoginOutcome::ALL {
        counter!(LOGINS, "outcome" => outcome.label()).increment(0);
    }
    for outcome in AuthOutcome::ALL {
        counter!(AUTHENTICATIONS, "outcome" => outcome.label()).increment(0);
    }
    for outcome in ["ok", "refused"] {
        counter!(SESSION_CHECKS, "outcome" => outcome).increment(0);
    }
    counter!(OUTBOX_QUEUED).increment(0);
    for outcome in DrainOutcome::ALL {
        counter!(OUTBOX_DRAINED, "outcome" => outcome.label()).increment(0);
    }
    gauge!(OUTBOX_USERS).set(0.0);
    gauge!(MYSQL_BREAKER).set(0.0);
}

/// What became of an outbox entry, the `outcome` label of
/// `history_outbox_drained_total`.
#[derive(Debug, Clone, Copy)]
pub enum DrainOutcome {
    /// Written to MySQL.
    Saved,
    /// Already there: an earlier attempt under its request id had committed.
    Repeat,
    /// Its conversation is gone (deleted meanwhile, or never the user's), or MySQL
    /// refused it for good: logged with its content, not written.
    Dropped,
}

impl DrainOutcome {
    const ALL: [Self; 3] = [Self::Saved, Self::Repeat, Self::Dropped];

    fn label(self) -> &'static str {
        match self {
            Self::Saved => "saved",
            Self::Repeat => "repeat",
            Self::Dropped => "dropped",
        }
    }
}

/// A save queued in the outbox because MySQL could not take it.
pub fn outbox_queued() {
    counter!(OUTBOX_QUEUED).increment(1);
}

pub fn outbox_drained(outcome: DrainOutcome) {
    counter!(OUTBOX_DRAINED, "outcome" => outcome.label()).increment(1);
}

/// Users with saves waiting in the outbox, as the drainer last saw them.
pub fn outbox_users(users: u64) {
    gauge!(OUTBOX_USERS).set(users as f64);
}

/// 1 while MySQL is left alone after a failure.
pub fn mysql_breaker(open: bool) {
    gauge!(MYSQL_BREAKER).set(if open { 1.0 } else { 0.0 });
}

pub fn login(outcome: LoginOutcome) {
    counter!(LOGINS, "outcome" => outcome.label()).increment(1);
}

pub fn authentication(outcome: AuthOutcome) {
    counter!(AUTHENTICATIONS, "outcome" => outcome.label()).increment(1);
}

/// A session looked up: live (`ok`), or missing, expired, or of a disabled user.
pub fn session_check(live: bool) {
    let outcome = if live { "ok" } else { "refused" };
    counter!(SESSION_CHECKS, "outcome" => outcome).increment(1);
}

pub fn cache_request(result: CacheResult) {
    counter!(CACHE_REQUESTS, "result" => result.label()).increment(1);
}

/// Saves committed by one INSERT: how well group commit is batching.
pub fn write_batch(saves: usize) {
    histogram!(WRITE_BATCH_SIZE).record(saves as f64);
}
