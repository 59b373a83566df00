//! The MySQL circuit breaker shared by the history and the accounts: after a MySQL
//! failure, MySQL is left alone for a second, so calls that need it fail at once (and
//! saves go to the outbox) instead of each waiting out its own timeout.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::HistoryError;
use crate::metrics;
use crate::writer::unix_now_ms;

/// How long MySQL is left alone after it failed.
const BREAK_MS: i64 = 1000;

/// Whether MySQL is worth trying: after a failure, not for [`BREAK_MS`]; then one call
/// tries again (and closes it, or opens it for another second).
#[derive(Default)]
pub(crate) struct Breaker {
    open_until_ms: AtomicI64,
}

impl Breaker {
    pub(crate) fn closed(&self) -> bool {
        let now = unix_now_ms();
        let until = self.open_until_ms.load(Ordering::Relaxed);
        // Past the pause, the first caller through re-opens it for the others while it
        // tries: one probe per second, not a stampede.
        until <= now
            && (until == 0
                || self
                    .open_until_ms
                    .compare_exchange(until, now + BREAK_MS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
    }

    /// Whether MySQL failed within the pause: a look that claims no probe, for callers
    /// that go on to [`crate::History::mysql`], which claims it.
    pub(crate) fn open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > unix_now_ms()
    }

    /// Records a failure that says something about MySQL: [`HistoryError::MysqlAway`]
    /// (the breaker's own answer) says nothing new, and must not prolong the pause
    /// while another caller's probe is out.
    pub(crate) fn failed_with(&self, error: &HistoryError) {
        if error.is_outage() && !matches!(error, HistoryError::MysqlAway) {
            self.failed();
        }
    }

    pub(crate) fn failed(&self) {
        let until = unix_now_ms() + BREAK_MS;
        if self.open_until_ms.swap(until, Ordering::Relaxed) == 0 {
            metrics::mysql_breaker(true);
            tracing::warn!("mysql failed: saves go to the outbox for now");
        }
    }

    pub(crate) fn succeeded(&self) {
        if self.open_until_ms.swap(0, Ordering::Relaxed) != 0 {
            metrics::mysql_breaker(false);
            tracing::info!("mysql answers again");
        }
    }
}
