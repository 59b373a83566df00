//! The quota itself. Reserving, settling and sweeping are each one Lua script, so the
//! check and the change happen atomically in Redis, whatever other replicas do.
//!
//! Every key a script touches is declared and belongs to one user, hash-tagged
//! `{user}` (`token:{u1}:2026-11-26`, `reservation:{u1}:<id>`, `reservations:{u1}:pending`),
//! so each script runs in one slot of a Redis Cluster. The one key across users,
//! `reservations:due` (the users with pending reservations, by earliest deadline), is
//! touched by plain commands only, outside the scripts, as is each model's calibration
//! (`calibration:<model>`, the ratio of the provider's prompt tokens to our estimate).
//!
//! Exactly once, whatever fails: a settlement Redis cannot take goes to the durable
//! [`Journal`] and is applied when Redis is back; a reservation the sweeper refunded
//! leaves a tombstone, so a settlement arriving late still charges its day, once; a
//! settlement of an unknown reservation leaves a short-lived marker, so a reserve whose
//! answer was lost, landing after it, takes nothing.
//!
//! This file holds the store, its keys and the day; reserving and extending are in
//! `reserve`, settling and the journal's replay in `settle`, the sweeper in `sweep`,
//! each model's calibration in `calibration`.

mod calibration;
mod reserve;
mod settle;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use chat_common::redis::{Connection, Pool};
use chat_common::user::validate_user_id;
use chat_proto::{QuotaState, RemainingRequest};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::Settings;
use crate::error::QuotaError;
use crate::journal::Journal;
use crate::metrics;

/// The quota store; cheap to clone.
#[derive(Clone)]
pub struct Quota {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    prefix: String,
    daily_limit: i64,
    timezone: TimeZone,
    key_ttl_secs: i64,
    reservation_ttl_ms: i64,
    redis_timeout: Duration,
    /// Where settlements Redis could not take wait for it; `None`: they fail instead.
    journal: Option<Journal>,
    prompt_ratio_start: f64,
    prompt_ratio_max: f64,
    /// Each model's calibration as last read or written here (see `calibration`).
    ratios: calibration::Ratios,
}

/// Today in the configured time zone.
struct Day {
    date: String,
    /// The day before: a reservation made before midnight is settled against its day.
    yesterday: String,
    reset_after_seconds: i64,
}

impl Quota {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let timezone = TimeZone::get(&settings.quota_timezone).map_err(|error| {
            anyhow::anyhow!(
                "QUOTA_TIMEZONE {:?} is not a known time zone: {error}",
                settings.quota_timezone
            )
        })?;
        anyhow::ensure!(
            settings.daily_limit >= 0,
            "DAILY_LIMIT must not be negative"
        );
        anyhow::ensure!(
            !settings.redis_key_prefix.contains(['{', '}']),
            "REDIS_KEY_PREFIX must not contain braces: they would change the keys' hash slots"
        );
        anyhow::ensure!(
            settings.reservation_ttl_secs > 0,
            "RESERVATION_TTL_SECS must be positive"
        );
        anyhow::ensure!(
            settings.prompt_ratio_start >= 1.0
                && settings.prompt_ratio_start <= settings.prompt_ratio_max,
            "PROMPT_RATIO_START must be at least 1 and at most PROMPT_RATIO_MAX"
        );
        let journal = match settings.settlement_journal_dir.as_str() {
            "" => None,
            dir => Some(Journal::open(std::path::Path::new(dir)).map_err(|error| {
                anyhow::anyhow!("SETTLEMENT_JOURNAL_DIR {dir:?} cannot be used: {error}")
            })?),
        };
        let redis_timeout = Duration::from_millis(settings.redis_timeout_ms);
        Ok(Self {
            inner: Arc::new(Inner {
                pool: chat_common::redis::pool(&settings.redis_addr, 64, redis_timeout)?,
                prefix: settings.redis_key_prefix.clone(),
                daily_limit: settings.daily_limit,
                timezone,
                key_ttl_secs: settings.quota_key_ttl_secs,
                reservation_ttl_ms: settings.reservation_ttl_secs * 1000,
                redis_timeout,
                journal,
                prompt_ratio_start: settings.prompt_ratio_start,
                prompt_ratio_max: settings.prompt_ratio_max,
                ratios: calibration::Ratios::default(),
            }),
        })
    }

    pub async fn remaining_tokens(
        &self,
        request: &RemainingRequest,
    ) -> Result<QuotaState, QuotaError> {
        validate_user_id(&request.user_id)?;
        let limit = self.limit(request.daily_limit)?;
        let day = self.today()?;
        let mut connection = self.connection().await?;
        let used: Option<i64> = self
            .redis(
                "get",
                redis::cmd("GET")
                    .arg(self.quota_key(&request.user_id, &day.date))
                    .query_async(&mut connection),
            )
            .await?;
        Ok(state(used.unwrap_or(0), limit, &day))
    }

    fn today(&self) -> Result<Day, QuotaError> {
        let now = Timestamp::now().to_zoned_datetime(self.inner.timezone.clone());
        let next_midnight = now
            .date()
            .tomorrow()
            .and_then(|tomorrow| tomorrow.to_zoned_datetime(self.inner.timezone.clone()))
            .map_err(QuotaError::Calendar)?;
        let yesterday = now.date().yesterday().map_err(QuotaError::Calendar)?;
        Ok(Day {
            date: now.date().to_string(),
            yesterday: yesterday.to_string(),
            reset_after_seconds: (next_midnight.timestamp().as_second()
                - now.timestamp().as_second())
            .max(1),
        })
    }

    fn quota_key(&self, user_id: &str, date: &str) -> String {
        format!("{}token:{{{user_id}}}:{date}", self.inner.prefix)
    }

    fn reservation_key(&self, user_id: &str, reservation_id: &str) -> String {
        format!(
            "{}reservation:{{{user_id}}}:{reservation_id}",
            self.inner.prefix
        )
    }

    /// The user's open reservations, by deadline.
    fn pending_key(&self, user_id: &str) -> String {
        format!("{}reservations:{{{user_id}}}:pending", self.inner.prefix)
    }

    /// A model's calibration. The name is not a hash tag's: the key stands alone.
    fn calibration_key(&self, model: &str) -> String {
        format!("{}calibration:{model}", self.inner.prefix)
    }

    /// The users with open reservations, by the earliest deadline the sweeper must see.
    fn due_key(&self) -> String {
        format!("{}reservations:due", self.inner.prefix)
    }

    /// The user's own limit when the caller sent one, else `DAILY_LIMIT`.
    fn limit(&self, requested: Option<i64>) -> Result<i64, QuotaError> {
        match requested {
            Some(limit) if limit < 0 => Err(QuotaError::LimitNegative),
            Some(limit) => Ok(limit),
            None => Ok(self.inner.daily_limit),
        }
    }

    async fn connection(&self) -> Result<Connection, QuotaError> {
        self.inner.pool.get().await.map_err(|error| {
            metrics::store_error();
            QuotaError::StoreUnavailable(error)
        })
    }

    /// Runs one Redis operation under the store's timeout, traced and timed.
    async fn redis<T>(
        &self,
        name: &'static str,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, QuotaError> {
        let timed = async {
            match tokio::time::timeout(self.inner.redis_timeout, operation).await {
                Ok(outcome) => outcome.map_err(QuotaError::StoreFailed),
                Err(_) => Err(QuotaError::StoreTimedOut),
            }
        };
        let outcome = chat_common::observe::db(metrics::REDIS, name, timed).await;
        if outcome.is_err() {
            metrics::store_error();
        }
        outcome
    }
}

fn state(used: i64, limit: i64, day: &Day) -> QuotaState {
    QuotaState {
        remaining: (limit - used).max(0),
        limit,
        reset_after_seconds: day.reset_after_seconds,
    }
}

fn check_ids(user_id: &str, reservation_id: &str) -> Result<(), QuotaError> {
    validate_user_id(user_id)?;
    let valid_id = !reservation_id.is_empty()
        && reservation_id.len() <= 64
        && reservation_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid_id {
        return Err(QuotaError::BadReservationId);
    }
    Ok(())
}
