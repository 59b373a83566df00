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

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{
    ExtendRequest, ExtendResponse, QuotaState, RemainingRequest, ReserveRequest, ReserveResponse,
    SettleRequest, SettleResponse,
};
use deadpool_redis::{Connection, Pool};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use redis::Script;

use crate::Settings;
use crate::error::QuotaError;
use crate::journal::{Journal, Settlement};
use crate::metrics;

static RESERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/reserve.lua")));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/settle.lua")));
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/sweep.lua")));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/extend.lua")));
static CALIBRATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/calibrate.lua")));

/// Reservations refunded per sweep script call, and users visited per round, to keep
/// each call short.
const SWEEP_BATCH: usize = 100;
/// A model's calibration is forgotten after this long without a sample.
const CALIBRATION_TTL_SECS: i64 = 30 * 24 * 3600;
/// How far one lower sample pulls a model's ratio down (a higher one lifts it at once).
const CALIBRATION_WEIGHT: f64 = 0.1;
/// Longest model name kept for calibration.
const MAX_MODEL_CHARS: usize = 200;

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
            }),
        })
    }

    /// Takes `tokens` from today's quota under the reservation id, unless that would
    /// pass the limit; with the prompt's part given, at least that part scaled by the
    /// model's calibration plus the output part. Replaying a granted reservation grants
    /// it again for free.
    pub async fn reserve_tokens(
        &self,
        request: &ReserveRequest,
    ) -> Result<ReserveResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        if request.tokens <= 0 {
            return Err(QuotaError::TokensNotPositive);
        }
        if request.prompt_tokens < 0 || request.output_tokens < 0 {
            return Err(QuotaError::PartsNegative);
        }
        if request.model.chars().count() > MAX_MODEL_CHARS {
            return Err(QuotaError::ModelTooLong);
        }
        let limit = self.limit(request.daily_limit)?;
        let day = self.today()?;
        let mut connection = self.connection().await?;
        let tokens = self.sized(&mut connection, request).await?;
        let deadline_ms = Timestamp::now().as_millisecond() + self.inner.reservation_ttl_ms;
        let mut invocation = RESERVE.key(self.quota_key(&request.user_id, &day.date));
        invocation
            .key(self.reservation_key(&request.user_id, &request.reservation_id))
            .key(self.pending_key(&request.user_id))
            .arg(tokens)
            .arg(limit)
            .arg(self.inner.key_ttl_secs)
            .arg(deadline_ms)
            .arg(&request.model)
            .arg(request.prompt_tokens);
        let (granted, used, first, held): (i64, i64, i64, i64) = self
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
            tracing::info!(user_id = %request.user_id, tokens, used, "quota exceeded");
        }
        Ok(ReserveResponse {
            granted,
            quota: Some(state(used, limit, &day)),
            reserved_tokens: held,
            lifetime_ms: self.inner.reservation_ttl_ms,
        })
    }

    /// What to reserve: `tokens`, or more when the prompt, scaled by what the provider
    /// has counted for this model, says so.
    async fn sized(
        &self,
        connection: &mut Connection,
        request: &ReserveRequest,
    ) -> Result<i64, QuotaError> {
        if request.prompt_tokens == 0 {
            return Ok(request.tokens);
        }
        let ratio = self.ratio(connection, &request.model).await?;
        // Both parts are bounded by the caller's prompt and output cap: no overflow.
        let prompt = (request.prompt_tokens as f64 * ratio).ceil() as i64;
        Ok(request
            .tokens
            .max(prompt.saturating_add(request.output_tokens)))
    }

    /// The model's ratio of the provider's prompt tokens to ours: calibrated, or
    /// `PROMPT_RATIO_START` before any usage was reported.
    async fn ratio(&self, connection: &mut Connection, model: &str) -> Result<f64, QuotaError> {
        let stored: Option<String> = self
            .redis(
                "hget",
                redis::cmd("HGET")
                    .arg(self.calibration_key(model))
                    .arg("ratio")
                    .query_async(connection),
            )
            .await?;
        let ratio = stored
            .and_then(|ratio| ratio.parse::<f64>().ok())
            .filter(|ratio| ratio.is_finite())
            .unwrap_or(self.inner.prompt_ratio_start);
        Ok(ratio.clamp(1.0, self.inner.prompt_ratio_max))
    }

    /// The model's calibration, as the gateway's reservations of it see it: the ratio,
    /// or `None` before any usage was reported.
    pub async fn calibration(&self, model: &str) -> Result<Option<f64>, QuotaError> {
        let mut connection = self.connection().await?;
        let stored: Option<String> = self
            .redis(
                "hget",
                redis::cmd("HGET")
                    .arg(self.calibration_key(model))
                    .arg("ratio")
                    .query_async(&mut connection),
            )
            .await?;
        Ok(stored.and_then(|ratio| ratio.parse().ok()))
    }

    /// Moves an open reservation's deadline a lifetime ahead.
    pub async fn extend_reservation(
        &self,
        request: &ExtendRequest,
    ) -> Result<ExtendResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        let deadline_ms = Timestamp::now().as_millisecond() + self.inner.reservation_ttl_ms;
        let mut connection = self.connection().await?;
        let mut invocation =
            EXTEND.key(self.reservation_key(&request.user_id, &request.reservation_id));
        invocation
            .key(self.pending_key(&request.user_id))
            .arg(deadline_ms);
        let extended: i64 = self
            .redis("extend", invocation.invoke_async(&mut connection))
            .await?;
        metrics::extension(extended == 1);
        Ok(ExtendResponse {
            extended: extended == 1,
        })
    }

    /// Replaces a reservation by the real usage (0 refunds it), exactly once: a retry
    /// of a settled reservation changes nothing and says so. The quota answered is
    /// against the limit kept with the reservation; a retry, whose reservation is gone,
    /// is answered against the default limit. When Redis cannot be reached and the
    /// journal is on, the settlement is journalled and answered `queued`.
    pub async fn settle_tokens(
        &self,
        request: &SettleRequest,
    ) -> Result<SettleResponse, QuotaError> {
        check_ids(&request.user_id, &request.reservation_id)?;
        if request.actual_tokens < 0 {
            return Err(QuotaError::ActualTokensNegative);
        }
        let settlement = Settlement {
            user_id: request.user_id.clone(),
            reservation_id: request.reservation_id.clone(),
            actual_tokens: request.actual_tokens,
            reported_prompt_tokens: request.reported_prompt_tokens,
        };
        let error = match self.apply(&settlement).await {
            Err(error) if error.is_transient() => error,
            outcome => return outcome,
        };
        let Some(journal) = &self.inner.journal else {
            return Err(error);
        };
        if let Err(journal_error) = journal.append(&settlement).await {
            tracing::error!(%error, %journal_error, user_id = %settlement.user_id, reservation_id = %settlement.reservation_id, "settlement neither applied nor journalled");
            return Err(error);
        }
        metrics::settlement_queued();
        tracing::warn!(%error, user_id = %settlement.user_id, reservation_id = %settlement.reservation_id, "redis unavailable; settlement journalled");
        Ok(SettleResponse {
            settled: false,
            quota: None,
            queued: true,
        })
    }

    /// Applies one settlement in Redis, then learns from its reported prompt tokens.
    async fn apply(&self, request: &Settlement) -> Result<SettleResponse, QuotaError> {
        let day = self.today()?;
        let mut connection = self.connection().await?;
        let mut invocation =
            SETTLE.key(self.reservation_key(&request.user_id, &request.reservation_id));
        invocation
            .key(self.pending_key(&request.user_id))
            .key(self.quota_key(&request.user_id, &day.date))
            .key(self.quota_key(&request.user_id, &day.yesterday))
            .arg(request.actual_tokens)
            .arg(self.inner.reservation_ttl_ms / 1000 * 2)
            .arg(self.inner.key_ttl_secs);
        let (settled, used, kept_limit, model, estimate, swept): (i64, i64, i64, String, i64, i64) =
            self.redis("settle", invocation.invoke_async(&mut connection))
                .await?;
        if let Some(reported) = request.reported_prompt_tokens
            && settled == 1
            && estimate > 0
            && reported > 0
        {
            self.calibrate(&mut connection, &model, reported as f64 / estimate as f64)
                .await;
        }
        let limit = if kept_limit >= 0 {
            kept_limit
        } else {
            self.inner.daily_limit
        };
        let settled = settled == 1;
        if swept == 1 {
            metrics::settlement_late();
            tracing::warn!(
                user_id = %request.user_id,
                reservation_id = %request.reservation_id,
                actual_tokens = request.actual_tokens,
                "settled after the sweeper refunded the reservation; usage charged in full"
            );
        } else {
            metrics::settlement(settled);
        }
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
            queued: false,
        })
    }

    /// One sample of the model's calibration. A failure costs only the sample: the
    /// settlement it came with stands.
    async fn calibrate(&self, connection: &mut Connection, model: &str, observed: f64) {
        let mut invocation = CALIBRATE.key(self.calibration_key(model));
        invocation
            .arg(observed)
            .arg(CALIBRATION_WEIGHT)
            .arg(self.inner.prompt_ratio_max)
            .arg(CALIBRATION_TTL_SECS);
        let outcome: Result<i64, _> = self
            .redis("calibrate", invocation.invoke_async(connection))
            .await;
        if let Err(error) = outcome {
            tracing::warn!(model, observed, %error, "calibrating the model's estimates failed");
        }
    }

    /// Applies every journalled settlement, if Redis takes them; answers how many were
    /// applied. The batch stays for the next round when Redis fails part way (applying
    /// one again changes nothing).
    pub async fn replay_journal(&self) -> Result<usize, QuotaError> {
        let Some(journal) = &self.inner.journal else {
            return Ok(0);
        };
        let Some(batch) = journal.batch().await? else {
            return Ok(0);
        };
        for settlement in &batch {
            match self.apply(settlement).await {
                Ok(_) => {}
                Err(error) if error.is_transient() => return Err(error),
                Err(error) => tracing::error!(
                    %error,
                    user_id = %settlement.user_id,
                    reservation_id = %settlement.reservation_id,
                    "a journalled settlement cannot be applied; dropped"
                ),
            }
        }
        journal.replayed().await?;
        metrics::journal_replayed(batch.len());
        if !batch.is_empty() {
            tracing::info!(settlements = batch.len(), "journalled settlements applied");
        }
        Ok(batch.len())
    }

    pub(crate) async fn replay_forever(self, interval: Duration) {
        if self.inner.journal.is_none() {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.replay_journal().await {
                tracing::warn!(%error, "replaying the settlement journal failed; retrying");
            }
        }
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
                .arg(now_ms)
                .arg(self.inner.key_ttl_secs);
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
