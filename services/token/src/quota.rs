//! The quota itself. Reserving, settling and sweeping are each one Lua script, so the
//! check and the change happen atomically in Redis, whatever other replicas do.
//!
//! Every key a script touches is declared and belongs to one user, hash-tagged
//! `{user}` (`token:{u1}:2026-11-26`, `reservation:{u1}:<id>`, `reservations:{u1}:pending`),
//! so each script runs in one slot of a Redis Cluster. The one key across users,
//! `reservations:due` (the users with pending reservations, by earliest deadline), is
//! touched by plain commands only, outside the scripts.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{
    QuotaState, RemainingRequest, ReserveRequest, ReserveResponse, SettleRequest, SettleResponse,
};
use deadpool_redis::{Connection, Pool};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use redis::Script;

use crate::Settings;
use crate::error::QuotaError;
use crate::metrics;

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reserve.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/settle.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/sweep.lua")));

/// Reservations refunded per sweep script call, and users visited per round, to keep
/// each call short.
const SWEEP_BATCH: usize = 100;

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
            }),
        })
    }

    /// Takes `tokens` from today's quota under the reservation id, unless that would
    /// pass the limit. Replaying a granted reservation grants it again for free.
    pub async fn reserve_tokens(
        &self,
        request: &ReserveRequest,
    ) -> Result<ReserveResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        if request.tokens <= 0 {
            return Err(QuotaError::TokensNotPositive);
        }
        let limit = self.limit(request.daily_limit)?;
        let day = self.today()?;
        let deadline_ms = Timestamp::now().as_millisecond() + self.inner.reservation_ttl_ms;
        let mut connection = self.connection().await?;
        let mut invocation = RESERVE.key(self.quota_key(&request.user_id, &day.date));
        invocation
            .key(self.reservation_key(&request.user_id, &request.reservation_id))
            .key(self.pending_key(&request.user_id))
            .arg(request.tokens)
            .arg(limit)
            .arg(self.inner.key_ttl_secs)
            .arg(deadline_ms);
        let (granted, used, first): (i64, i64, i64) = self
            .redis("reserve", invocation.invoke_async(&mut connection))
            .await?;
        let granted = granted == 1;
        if first == 1 {
            // After the script, never before: the sweeper drops a user only once their
            // pending set is empty, then looks again (see `sweep_user`).
            let listed = self
                .redis(
                    "zadd",
                    redis::cmd("ZADD")
                        .arg(self.due_key())
                        .arg("LT")
                        .arg(deadline_ms)
                        .arg(&request.user_id)
                        .query_async::<i64>(&mut connection),
                )
                .await;
            if let Err(error) = listed {
                // The reservation stands; only an abandoned one would wait for the next.
                tracing::warn!(user_id = %request.user_id, %error, "listing the user for the sweeper failed");
            }
        }
        metrics::reservation(granted);
        if !granted {
            tracing::info!(user_id = %request.user_id, tokens = request.tokens, used, "quota exceeded");
        }
        Ok(ReserveResponse {
            granted,
            quota: Some(state(used, limit, &day)),
        })
    }

    /// Replaces a reservation by the real usage (0 refunds it), exactly once: a retry
    /// of a settled reservation changes nothing and says so. The quota answered is
    /// against the limit kept with the reservation; a retry, whose reservation is gone,
    /// is answered against the default limit.
    pub async fn settle_tokens(
        &self,
        request: &SettleRequest,
    ) -> Result<SettleResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        if request.actual_tokens < 0 {
            return Err(QuotaError::ActualTokensNegative);
        }
        let day = self.today()?;
        let mut connection = self.connection().await?;
        let mut invocation =
            SETTLE.key(self.reservation_key(&request.user_id, &request.reservation_id));
        invocation
            .key(self.pending_key(&request.user_id))
            .key(self.quota_key(&request.user_id, &day.date))
            .key(self.quota_key(&request.user_id, &day.yesterday))
            .arg(request.actual_tokens);
        let (settled, used, kept_limit): (i64, i64, i64) = self
            .redis("settle", invocation.invoke_async(&mut connection))
            .await?;
        let limit = if kept_limit >= 0 {
            kept_limit
        } else {
            self.inner.daily_limit
        };
        let settled = settled == 1;
        metrics::settlement(settled);
        if settled && request.actual_tokens == 0 {
            metrics::failed_call_refunded();
        }
        if !settled {
            tracing::warn!(
                user_id = %request.user_id,
                reservation_id = %request.reservation_id,
                "settlement of an unknown or already settled reservation ignored"
            );
        }
        Ok(SettleResponse {
            settled,
            quota: Some(state(used, limit, &day)),
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

    /// Refunds every reservation past its deadline; returns how many. Visits the users
    /// `reservations:due` lists with a deadline passed, one script each.
    pub async fn sweep(&self) -> Result<u64, QuotaError> {
        let mut connection = self.connection().await?;
        let day = self.today()?;
        let mut total = 0;
        // Each round moves every user it visits into the future or off the list; the
        // bound only guards against a clock gone wrong.
        for _ in 0..1000 {
            let now_ms = Timestamp::now().as_millisecond();
            let users: Vec<String> = self
                .redis(
                    "zrangebyscore",
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.due_key())
                        .arg("-inf")
                        .arg(now_ms)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SWEEP_BATCH)
                        .query_async(&mut connection),
                )
                .await?;
            for user_id in &users {
                total += self.sweep_user(&mut connection, user_id, &day).await?;
            }
            if users.len() < SWEEP_BATCH {
                break;
            }
        }
        Ok(total)
    }

    /// One user's expired reservations: listed first, then refunded by a script that
    /// declares each of them; then the user's place on `reservations:due`.
    async fn sweep_user(
        &self,
        connection: &mut Connection,
        user_id: &str,
        day: &Day,
    ) -> Result<u64, QuotaError> {
        let pending = self.pending_key(user_id);
        let mut total = 0;
        let earliest = loop {
            let now_ms = Timestamp::now().as_millisecond();
            let expired: Vec<String> = self
                .redis(
                    "zrangebyscore",
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&pending)
                        .arg("-inf")
                        .arg(now_ms)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(SWEEP_BATCH)
                        .query_async(&mut *connection),
                )
                .await?;
            let mut invocation = SWEEP.key(&pending);
            invocation
                .key(self.quota_key(user_id, &day.date))
                .key(self.quota_key(user_id, &day.yesterday))
                .key(&expired)
                .arg(now_ms);
            let (refunded, earliest): (u64, i64) = self
                .redis("sweep", invocation.invoke_async(&mut *connection))
                .await?;
            total += refunded;
            if expired.len() < SWEEP_BATCH {
                break earliest;
            }
        };
        let due = self.due_key();
        if earliest >= 0 {
            self.redis(
                "zadd",
                redis::cmd("ZADD")
                    .arg(&due)
                    .arg(earliest)
                    .arg(user_id)
                    .query_async::<i64>(&mut *connection),
            )
            .await?;
            return Ok(total);
        }
        // Off the list, then a second look: a reservation made meanwhile found the set
        // empty and listed the user itself, or is seen here and listed again.
        self.redis(
            "zrem",
            redis::cmd("ZREM")
                .arg(&due)
                .arg(user_id)
                .query_async::<i64>(&mut *connection),
        )
        .await?;
        let first: Vec<(String, i64)> = self
            .redis(
                "zrange",
                redis::cmd("ZRANGE")
                    .arg(&pending)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut *connection),
            )
            .await?;
        if let Some((_, deadline)) = first.first() {
            self.redis(
                "zadd",
                redis::cmd("ZADD")
                    .arg(&due)
                    .arg("LT")
                    .arg(*deadline)
                    .arg(user_id)
                    .query_async::<i64>(&mut *connection),
            )
            .await?;
        }
        Ok(total)
    }

    pub(crate) async fn sweep_forever(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(refunded) => {
                    metrics::abandoned_refunded(refunded);
                    tracing::warn!(refunded, "refunded abandoned reservations");
                }
                Err(error) => tracing::warn!(%error, "reservation sweep failed"),
            }
        }
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
