//! Settling: a reservation replaced by the real usage exactly once, whether Redis takes
//! it at once or, through the [`Journal`](crate::journal::Journal), once it is back.

use std::sync::LazyLock;
use std::time::Duration;

use chat_common::redis::Connection;
use chat_proto::{SettleRequest, SettleResponse};
use redis::Script;

use super::{Day, Quota, check_ids, state};
use crate::error::QuotaError;
use crate::journal::Settlement;
use crate::metrics;

static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/settle.lua")));

/// What the settle script answers.
struct Settled {
    settled: bool,
    /// The day's spending after the settlement.
    used: i64,
    /// The limit kept with the reservation; negative when it is gone.
    kept_limit: i64,
    model: String,
    /// Our estimate of the prompt's tokens at reserve time.
    estimate: i64,
    /// The sweeper had refunded the reservation: charged in full from its tombstone.
    swept: bool,
}

impl Quota {
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
            sent_prompt_tokens: request.sent_prompt_tokens,
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
        let outcome = self.run_settle(&mut connection, request, &day).await?;
        // Our count of what was sent: the reserved one unless the caller says otherwise.
        let ours = request
            .sent_prompt_tokens
            .filter(|sent| *sent > 0)
            .unwrap_or(outcome.estimate);
        if let Some(reported) = request.reported_prompt_tokens
            && outcome.settled
            && ours > 0
            && reported > 0
        {
            let observed = reported as f64 / ours as f64;
            self.calibrate(&mut connection, &outcome.model, observed)
                .await;
        }
        let limit = if outcome.kept_limit >= 0 {
            outcome.kept_limit
        } else {
            self.inner.daily_limit
        };
        report_settlement(request, &outcome);
        Ok(SettleResponse {
            settled: outcome.settled,
            quota: Some(state(outcome.used, limit, &day)),
            queued: false,
        })
    }

    /// The settle script: the reservation replaced by the usage, atomically.
    async fn run_settle(
        &self,
        connection: &mut Connection,
        request: &Settlement,
        day: &Day,
    ) -> Result<Settled, QuotaError> {
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
            self.redis("settle", invocation.invoke_async(connection))
                .await?;
        Ok(Settled {
            settled: settled == 1,
            used,
            kept_limit,
            model,
            estimate,
            swept: swept == 1,
        })
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
}

/// The metrics and logs of one settlement applied in Redis.
fn report_settlement(request: &Settlement, outcome: &Settled) {
    if outcome.swept {
        metrics::settlement_late();
        tracing::warn!(
            user_id = %request.user_id,
            reservation_id = %request.reservation_id,
            actual_tokens = request.actual_tokens,
            "settled after the sweeper refunded the reservation; usage charged in full"
        );
    } else {
        metrics::settlement(outcome.settled);
    }
    if outcome.settled && request.actual_tokens == 0 {
        metrics::failed_call_refunded();
    }
    if !outcome.settled {
        tracing::warn!(
            user_id = %request.user_id,
            reservation_id = %request.reservation_id,
            "settlement of an unknown or already settled reservation ignored"
        );
    }
}
