//! A reservation of tokens against the caller's daily quota, settled exactly once by
//! construction: [`Reservation::settle`] and [`Reservation::refund`] consume it, and one
//! dropped unsettled (a bug, or a task that panicked) is caught in `Drop`: logged,
//! counted in `gateway_reservations_dropped_total`, and refunded in the background.
//!
//! Nothing lost, nothing twice, whatever fails:
//! - While it is open, a task extends it every third of its lifetime, so the token
//!   service's sweeper never refunds a long stream's reservation under it.
//! - A settlement the token service does not take is retried in the background, with
//!   backoff, for [`SETTLE_RETRY_WINDOW`]; the caller is answered at once with the
//!   quota the settlement will leave. One arriving after the sweeper refunded the
//!   reservation still charges, once (the token service keeps a tombstone). When the
//!   token service stays away for the whole window, the usage goes uncharged: logged,
//!   and counted in `gateway_settlements_abandoned_total`. A graceful stop waits for the
//!   retries as for a chat, and when its grace is nearly over tries each once more
//!   before giving up on it the same way; only a killed process loses them unlogged.
//!   When only Redis is away, the token service journals the settlement itself.
//! - A reserve whose answer was lost (an error or a timeout on the way back) may have
//!   been granted: it is settled to 0 by its id in the background, and a reserve landing
//!   after that settlement takes nothing.

use std::time::Duration;

use chat_proto::{ExtendRequest, ReserveRequest, SettleRequest, Usage};
use tokio::task::AbortHandle;
use tonic::Code;

use crate::auth::Caller;
use crate::metrics;
use crate::{ApiError, Backends};

/// How long a settlement the token service did not take is retried in the background.
/// Past the reservation's lifetime it still counts: the sweeper leaves a tombstone.
pub const SETTLE_RETRY_WINDOW: Duration = Duration::from_secs(600);
/// Pause after the first failed attempt; doubled after each, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);
/// Extensions come at least this far apart, whatever the lifetime.
const SHORTEST_KEEPALIVE: Duration = Duration::from_millis(100);

/// What a chat reserves: our count of its prompt, and the most its reply may cost. The
/// token service scales the prompt's part by what the provider has reported for the
/// model, so a provider whose tokenizer counts more is covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// The model the call goes to: the key of its calibration.
    pub model: String,
    /// The prompt by our tokenizer (o200k), overhead included.
    pub prompt_tokens: i64,
    /// The output cap sent to the provider, plus any room held for retrieved context
    /// (not known yet when the reservation is taken).
    pub output_tokens: i64,
    /// The least to reserve, whatever the estimate (`MIN_RESERVATION`).
    pub floor: i64,
}

impl Estimate {
    /// The reservation before calibration: prompt and output, above the floor.
    pub fn tokens(&self) -> i64 {
        (self.prompt_tokens + self.output_tokens).max(self.floor)
    }
}

/// What a finished call is charged.
#[derive(Debug, Clone, Copy)]
pub enum Charge {
    /// The usage the llm service reported: charged in full, and its prompt tokens
    /// calibrate the model's next reservations.
    Reported(Usage),
    /// Counted by us (no usage came: a stream that broke, a client that left).
    Counted(i64),
}

impl Charge {
    fn tokens(self) -> i64 {
        match self {
            Self::Reported(usage) => usage.total_tokens,
            Self::Counted(tokens) => tokens,
        }
    }

    fn reported_prompt_tokens(self) -> Option<i64> {
        match self {
            Self::Reported(usage) if usage.prompt_tokens > 0 => Some(usage.prompt_tokens),
            _ => None,
        }
    }
}

#[must_use = "a reservation must be settled or refunded"]
pub struct Reservation {
    backends: Backends,
    user_id: String,
    id: String,
    /// Tokens left right after reserving, and what was held: what the settlement will
    /// leave is estimated from them when the token service cannot say.
    remaining_after_reserve: i64,
    reserved: i64,
    /// Our count of the prompt sent, once known: the reserved estimate held room for
    /// retrieved context, which may have come smaller (or not at all).
    sent_prompt: Option<i64>,
    /// The task that extends the reservation while it is open.
    keepalive: Option<AbortHandle>,
    /// Set once a settlement starts; `Drop` refunds a reservation without it.
    closed: bool,
}

impl Reservation {
    /// Reserves `estimate` against the caller's daily limit; a refusal is
    /// `quota_exceeded` with the quota.
    pub async fn take(
        backends: &Backends,
        caller: &Caller,
        estimate: &Estimate,
    ) -> Result<Self, ApiError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user_id = &caller.user_id;
        let reserved = backends
            .reserve(ReserveRequest {
                user_id: user_id.clone(),
                reservation_id: id.clone(),
                tokens: estimate.tokens(),
                daily_limit: caller.daily_limit,
                model: estimate.model.clone(),
                prompt_tokens: estimate.prompt_tokens,
                output_tokens: estimate.output_tokens,
            })
            .await;
        let reserved = match reserved {
            Ok(reserved) => reserved,
            Err(status) => {
                if status.code() != Code::InvalidArgument {
                    // It may have been granted on the way: give it back now rather than
                    // hold it until the sweeper.
                    settle_in_background(backends.clone(), settlement(user_id, &id, 0, None));
                }
                return Err(ApiError::dependency("token", status));
            }
        };
        let quota = reserved.quota.unwrap_or_default();
        if !reserved.granted {
            return Err(ApiError::QuotaExceeded(quota));
        }
        let keepalive = (reserved.lifetime_ms > 0).then(|| {
            let every =
                (Duration::from_millis(reserved.lifetime_ms as u64) / 3).max(SHORTEST_KEEPALIVE);
            let request = ExtendRequest {
                user_id: user_id.clone(),
                reservation_id: id.clone(),
            };
            tokio::spawn(keep_alive(backends.clone(), request, every)).abort_handle()
        });
        Ok(Self {
            backends: backends.clone(),
            user_id: user_id.clone(),
            id,
            remaining_after_reserve: quota.remaining,
            reserved: reserved.reserved_tokens,
            sent_prompt: None,
            keepalive,
            closed: false,
        })
    }

    /// Records our count of the prompt actually sent: the provider's count is compared
    /// with it to calibrate the model.
    pub fn prompt_sent(&mut self, tokens: i64) {
        self.sent_prompt = Some(tokens);
    }

    /// Charges `charge` instead of the reservation and answers the tokens left. When
    /// the token service does not take it at once, it is retried in the background and
    /// the tokens left are estimated: the quota after reserving, with the difference
    /// between the reservation and the charge given back.
    pub async fn settle(mut self, charge: Charge) -> i64 {
        self.close();
        let used = charge.tokens();
        let mut request = settlement(
            &self.user_id,
            &self.id,
            used,
            charge.reported_prompt_tokens(),
        );
        request.sent_prompt_tokens = self.sent_prompt;
        let estimated = (self.remaining_after_reserve + self.reserved - used).max(0);
        match self.backends.settle(request.clone()).await {
            Ok(settled) => settled.quota.map_or(estimated, |quota| quota.remaining),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = %status.message(), reservation_id = %self.id, "settlement failed; retrying in the background");
                settle_in_background(self.backends.clone(), request);
                estimated
            }
        }
    }

    /// Gives the whole reservation back: the model was never reached or failed.
    pub async fn refund(self) -> i64 {
        self.settle(Charge::Counted(0)).await
    }

    fn close(&mut self) {
        self.closed = true;
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
    }
}

fn settlement(
    user_id: &str,
    id: &str,
    used: i64,
    reported_prompt_tokens: Option<i64>,
) -> SettleRequest {
    SettleRequest {
        user_id: user_id.to_owned(),
        reservation_id: id.to_owned(),
        actual_tokens: used,
        reported_prompt_tokens,
        sent_prompt_tokens: None,
    }
}

/// Extends the reservation every `every` until aborted (it is closed) or the token
/// service says it is no longer open. A failed extension is tried again next time: the
/// lifetime leaves room for two.
async fn keep_alive(backends: Backends, request: ExtendRequest, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match backends.extend(request.clone()).await {
            Ok(answer) if answer.extended => {}
            Ok(_) => return,
            Err(status) => tracing::warn!(
                reservation_id = %request.reservation_id,
                code = ?status.code(),
                message = %status.message(),
                "extending a reservation failed; trying again"
            ),
        }
    }
}

/// Retries `request` with backoff until the token service takes it, for at most
/// [`SETTLE_RETRY_WINDOW`]; settling is idempotent by reservation id, so an attempt
/// that did land and lost its answer is harmless to repeat.
/// The process's shutdown waits for it; when its grace is nearly over, the retry is
/// tried once more at once, and given up on if that fails too.
fn settle_in_background(backends: Backends, request: SettleRequest) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let stopping = backends.background().clone();
    stopping.clone().spawn(async move {
        let started = tokio::time::Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut last = false;
        loop {
            let outcome = backends.settle(request.clone()).await;
            match outcome {
                Ok(_) => return,
                Err(status) if status.code() == Code::InvalidArgument => {
                    tracing::error!(code = ?status.code(), message = %status.message(), "the token service refused a settlement");
                    return;
                }
                Err(status) if last || started.elapsed() + pause > SETTLE_RETRY_WINDOW => {
                    metrics::settlement_abandoned();
                    tracing::error!(
                        user_id = %request.user_id,
                        reservation_id = %request.reservation_id,
                        used = request.actual_tokens,
                        code = ?status.code(),
                        message = %status.message(),
                        "settlement failed for good; the sweeper refunds the reservation and this usage goes uncharged"
                    );
                    return;
                }
                Err(_) => {
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = stopping.interrupted() => last = true,
                    }
                    pause = (pause * 2).min(LONGEST_PAUSE);
                }
            }
        }
    });
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.close();
        metrics::reservation_dropped();
        tracing::error!(
            user_id = %self.user_id,
            reservation_id = %self.id,
            "a reservation was dropped unsettled; refunding it"
        );
        settle_in_background(
            self.backends.clone(),
            settlement(&self.user_id, &self.id, 0, None),
        );
    }
}

#[cfg(test)]
mod tests;
