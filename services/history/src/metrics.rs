//! Every series the history service records itself, with its labels. The Grafana
//! dashboard and the Prometheus rules in `deploy/` query these names: rename nothing
//! here without them. MySQL and Redis calls are timed by `chat_common::observe::db`,
//! under the `system` labels below.

use ::metrics::{counter, histogram};

const CACHE_REQUESTS: &str = "history_cache_requests_total";
const WRITE_BATCH_SIZE: &str = "history_write_batch_size";
const LOGINS: &str = "accounts_logins_total";
const AUTHENTICATIONS: &str = "accounts_authentications_total";
const SESSION_CHECKS: &str = "accounts_session_checks_total";

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
