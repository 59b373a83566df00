//! A reservation of tokens against the caller's daily quota, settled exactly once by
//! construction: [`Reservation::settle`] and [`Reservation::refund`] consume it, and one
//! dropped unsettled (a bug, or a task that panicked) is caught in `Drop`: logged,
//! counted in `gateway_reservations_dropped_total`, and refunded in the background.

use std::time::Duration;

use chat_proto::{QuotaState, ReserveRequest, SettleRequest};

use crate::auth::Caller;
use crate::metrics;
use crate::{ApiError, Backends};

/// Attempts at settling before leaving the reservation to the token service's sweeper.
const SETTLE_ATTEMPTS: u32 = 4;
/// Pause after the first failed attempt; tripled after each.
const FIRST_PAUSE: Duration = Duration::from_millis(50);

#[must_use = "a reservation must be settled or refunded"]
pub struct Reservation {
    backends: Backends,
    user_id: String,
    id: String,
    /// Tokens left right after reserving: what to report when settling fails.
    remaining_after_reserve: i64,
    /// Set once a settlement starts; `Drop` refunds a reservation without it.
    closed: bool,
}

impl Reservation {
    /// Reserves `tokens` against the caller's daily limit; a refusal is `quota_exceeded`
    /// with the quota.
    pub async fn take(backends: &Backends, caller: &Caller, tokens: i64) -> Result<Self, ApiError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let user_id = &caller.user_id;
        let reserved = backends
            .reserve(ReserveRequest {
                user_id: user_id.clone(),
                reservation_id: id.clone(),
                tokens,
                daily_limit: caller.daily_limit,
            })
            .await
            .map_err(|status| ApiError::dependency("token", status))?;
        let quota = reserved.quota.unwrap_or_default();
        if !reserved.granted {
            return Err(ApiError::QuotaExceeded(quota));
        }
        Ok(Self {
            backends: backends.clone(),
            user_id: user_id.clone(),
            id,
            remaining_after_reserve: quota.remaining,
            closed: false,
        })
    }

    /// Charges `used` tokens instead of the reservation (0 refunds it) and answers the
    /// tokens left, retrying a few times. If every attempt fails, the token service's
    /// sweeper refunds the reservation when it expires; that is logged loudly, as the
    /// real usage goes uncharged, and the tokens left after reserving are answered.
    pub async fn settle(mut self, used: i64) -> i64 {
        self.closed = true;
        match self.settle_with_retries(used).await {
            Some(quota) => quota.remaining,
            None => self.remaining_after_reserve,
        }
    }

    /// Gives the whole reservation back: the model was never reached or failed.
    pub async fn refund(self) -> i64 {
        self.settle(0).await
    }

    async fn settle_with_retries(&self, used: i64) -> Option<QuotaState> {
        let mut pause = FIRST_PAUSE;
        for attempt in 1..=SETTLE_ATTEMPTS {
            match self.backends.settle(self.settlement(used)).await {
                Ok(settled) => return settled.quota,
                Err(status) if attempt < SETTLE_ATTEMPTS => {
                    tracing::warn!(attempt, code = ?status.code(), message = %status.message(), "settlement failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                }
                Err(status) => tracing::error!(
                    user_id = %self.user_id,
                    reservation_id = %self.id,
                    used,
                    code = ?status.code(),
                    message = %status.message(),
                    "settlement failed for good; the sweeper will refund the reservation and this usage goes uncharged"
                ),
            }
        }
        None
    }

    fn settlement(&self, used: i64) -> SettleRequest {
        SettleRequest {
            user_id: self.user_id.clone(),
            reservation_id: self.id.clone(),
            actual_tokens: used,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        metrics::reservation_dropped();
        tracing::error!(
            user_id = %self.user_id,
            reservation_id = %self.id,
            "a reservation was dropped unsettled; refunding it"
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (backends, request) = (self.backends.clone(), self.settlement(0));
        runtime.spawn(async move {
            if let Err(status) = backends.settle(request).await {
                tracing::error!(code = ?status.code(), message = %status.message(), "refunding a dropped reservation failed; the sweeper will");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use chat_testing::TestRedis;
    use tokio::net::TcpListener;

    use super::*;
    use crate::Settings;

    /// A real token service on its own Redis prefix, and the gateway's clients of it.
    async fn token_service(daily_limit: i64) -> anyhow::Result<(Backends, TestRedis)> {
        chat_common::telemetry::init_for_tests();
        let redis = TestRedis::new().await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let token_addr = format!("http://{}", listener.local_addr()?);
        let token = chat_token::Settings {
            redis_addr: redis.addr.clone(),
            redis_key_prefix: redis.prefix.clone(),
            token_metrics_listen: String::new(),
            daily_limit,
            ..chat_token::Settings::default()
        };
        tokio::spawn(chat_token::run(token, listener, std::future::pending()));
        let backends = Backends::connect(&Settings {
            token_addr,
            token_timeout_ms: 5000,
            ..Settings::default()
        })?;
        Ok((backends, redis))
    }

    async fn remaining(backends: &Backends) -> anyhow::Result<i64> {
        Ok(backends.remaining("reserver", None).await?.remaining)
    }

    fn reserver() -> Caller {
        Caller {
            user_id: "reserver".to_owned(),
            daily_limit: None,
            rate_limit_per_minute: None,
        }
    }

    #[tokio::test]
    async fn settling_charges_the_usage_once_and_a_dropped_reservation_is_refunded()
    -> anyhow::Result<()> {
        let (backends, _redis) = token_service(1000).await?;
        // The token service may still be starting: the first reservation waits for it.
        let mut first = None;
        for _ in 0..100 {
            match Reservation::take(&backends, &reserver(), 300).await {
                Ok(reservation) => {
                    first = Some(reservation);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let Some(first) = first else {
            anyhow::bail!("the token service never answered");
        };
        assert_eq!(remaining(&backends).await?, 700, "held while open");
        assert_eq!(first.settle(120).await, 880, "charged the real usage");

        let second = Reservation::take(&backends, &reserver(), 500).await?;
        assert_eq!(remaining(&backends).await?, 380);
        drop(second);
        // Refunded in the background, without waiting for the sweeper.
        let mut left = 0;
        for _ in 0..100 {
            left = remaining(&backends).await?;
            if left == 880 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(left, 880, "the dropped reservation was refunded");

        let refused = Reservation::take(&backends, &reserver(), 5000).await;
        assert!(matches!(refused, Err(ApiError::QuotaExceeded(_))));
        Ok(())
    }
}
