//! The sweeper: refunds reservations nobody settled or extended by their deadline, user
//! by user from `reservations:due`, and keeps each user's place on that list.

use std::sync::LazyLock;
use std::time::Duration;

use chat_common::redis::Connection;
use jiff::Timestamp;
use redis::Script;

use super::{Day, Quota};
use crate::error::QuotaError;
use crate::metrics;

static SWEEP: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/sweep.lua")));

/// Reservations refunded per sweep script call, and users visited per round, to keep
/// each call short.
const SWEEP_BATCH: usize = 100;

impl Quota {
    /// Refunds every reservation past its deadline; returns how many. Visits the users
    /// `reservations:due` lists with a deadline passed, one script each.
    pub async fn sweep(&self) -> Result<u64, QuotaError> {
        let mut connection = self.connection().await?;
        let day = self.today()?;
        let due = self.due_key();
        let mut total = 0;
        // Each round moves every user it visits into the future or off the list; the
        // bound only guards against a clock gone wrong.
        for _ in 0..1000 {
            let now_ms = Timestamp::now().as_millisecond();
            let users = self.due_by(&mut connection, &due, now_ms).await?;
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
        let (total, earliest) = self.refund_expired(connection, user_id, day).await?;
        if earliest >= 0 {
            self.redis(
                "zadd",
                redis::cmd("ZADD")
                    .arg(self.due_key())
                    .arg(earliest)
                    .arg(user_id)
                    .query_async::<i64>(&mut *connection),
            )
            .await?;
            return Ok(total);
        }
        self.delist(connection, user_id).await?;
        Ok(total)
    }

    /// Refunds the user's reservations past their deadline, a batch per script call;
    /// answers how many, and the earliest deadline left (negative: none is left).
    async fn refund_expired(
        &self,
        connection: &mut Connection,
        user_id: &str,
        day: &Day,
    ) -> Result<(u64, i64), QuotaError> {
        let pending = self.pending_key(user_id);
        let mut total = 0;
        loop {
            let now_ms = Timestamp::now().as_millisecond();
            let expired = self.due_by(connection, &pending, now_ms).await?;
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
                return Ok((total, earliest));
            }
        }
    }

    /// Takes a user with nothing pending off `reservations:due`.
    async fn delist(&self, connection: &mut Connection, user_id: &str) -> Result<(), QuotaError> {
        // Off the list, then a second look: a reservation made meanwhile found the set
        // empty and listed the user itself, or is seen here and listed again.
        self.redis(
            "zrem",
            redis::cmd("ZREM")
                .arg(self.due_key())
                .arg(user_id)
                .query_async::<i64>(&mut *connection),
        )
        .await?;
        let first: Vec<(String, i64)> = self
            .redis(
                "zrange",
                redis::cmd("ZRANGE")
                    .arg(self.pending_key(user_id))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut *connection),
            )
            .await?;
        if let Some((_, deadline)) = first.first() {
            self.list_due(connection, user_id, *deadline).await?;
        }
        Ok(())
    }

    /// Lists the user on `reservations:due` by `deadline_ms`, unless listed earlier.
    async fn list_due(
        &self,
        connection: &mut Connection,
        user_id: &str,
        deadline_ms: i64,
    ) -> Result<(), QuotaError> {
        self.redis(
            "zadd",
            self.due_listing(user_id, deadline_ms)
                .query_async::<i64>(connection),
        )
        .await?;
        Ok(())
    }

    /// The command that lists the user on `reservations:due` by `deadline_ms`, unless
    /// listed earlier (`LT`).
    pub(super) fn due_listing(&self, user_id: &str, deadline_ms: i64) -> redis::Cmd {
        let mut command = redis::cmd("ZADD");
        command
            .arg(self.due_key())
            .arg("LT")
            .arg(deadline_ms)
            .arg(user_id);
        command
    }

    /// The first [`SWEEP_BATCH`] members of the sorted set `key` scored `now_ms` or less.
    async fn due_by(
        &self,
        connection: &mut Connection,
        key: &str,
        now_ms: i64,
    ) -> Result<Vec<String>, QuotaError> {
        self.redis(
            "zrangebyscore",
            redis::cmd("ZRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(SWEEP_BATCH)
                .query_async(connection),
        )
        .await
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
}
