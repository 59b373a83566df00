//! Retrying a provider that is rate limited or overloaded, within the caller's deadline.
//!
//! backon supplies the backoff (exponential, with jitter) and the loop; the deadline is
//! ours: each attempt gets only the time left, and a pause that would end past the
//! deadline is not taken, so the caller hears "rate limited" while it still listens
//! rather than a timeout of its own.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use crate::Settings;
use crate::error::LlmError;
use crate::metrics;

/// The doubling stops here (1024 × the first pause), so a generous retry count
/// cannot produce an absurd pause.
const MAX_DOUBLINGS: u32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    max_retries: u32,
    /// The first pause; each retry doubles it.
    base: Duration,
}

impl RetryPolicy {
    pub fn new(settings: &Settings) -> Self {
        Self {
            max_retries: settings.llm_max_retries,
            base: Duration::from_millis(settings.llm_retry_base_ms),
        }
    }

    /// "Equal jitter": each pause is half its step fixed and half random, so retries of
    /// many callers spread out without ever waiting less than half the step. backon
    /// adds up to 100% of its delay as jitter, so its delay is half our step.
    fn backoff(&self) -> ExponentialBuilder {
        let half = self.base / 2;
        ExponentialBuilder::default()
            .with_min_delay(half)
            .with_factor(2.0)
            .with_max_delay(half.saturating_mul(1 << MAX_DOUBLINGS))
            .with_max_times(self.max_retries as usize)
            .with_jitter()
    }

    /// Runs `attempt` until it succeeds, fails for good, or retrying is over.
    /// `model` labels the retries in the metrics.
    pub async fn run<T, Fut>(
        &self,
        deadline: Instant,
        model: &str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, LlmError>
    where
        Fut: Future<Output = Result<T, LlmError>>,
    {
        let within_deadline = || {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = attempt();
            async move {
                tokio::time::timeout(left, attempt)
                    .await
                    .unwrap_or(Err(LlmError::Timeout))
            }
        };
        let mut retries = 0;
        let outcome = within_deadline
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(|error| matches!(error, LlmError::Transient(_)))
            .adjust(|_, pause| pause.filter(|pause| Instant::now() + *pause < deadline))
            .notify(|error, pause| {
                tracing::info!(
                    retries,
                    pause_ms = pause.as_millis() as u64,
                    %error,
                    "provider rate limited; retrying"
                );
                metrics::retried(model);
                retries += 1;
            })
            .await;
        outcome.map_err(|error| match error {
            // backon stops early only when `adjust` saw no time left.
            LlmError::Transient(detail) if retries < self.max_retries => {
                LlmError::RateLimitedAtDeadline(detail)
            }
            LlmError::Transient(detail) => LlmError::RateLimited { retries, detail },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    fn policy(max_retries: u32, base: Duration) -> RetryPolicy {
        RetryPolicy { max_retries, base }
    }

    #[test]
    fn backoff_grows_and_stays_within_its_step() {
        let base = Duration::from_millis(100);
        for _ in 0..20 {
            let pauses = policy(5, base).backoff().build();
            for (retry, pause) in pauses.enumerate() {
                let step = base * (1 << retry);
                assert!(
                    pause >= step / 2 && pause <= step,
                    "{pause:?} for retry {retry}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_as_often_as_allowed() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempts = 0;
        let outcome: Result<(), _> = policy(3, Duration::from_millis(10))
            .run(deadline, "m", || {
                attempts += 1;
                async { Err(LlmError::Transient("429 slow down".into())) }
            })
            .await;
        assert_eq!(attempts, 4);
        assert!(
            matches!(&outcome, Err(LlmError::RateLimited { retries: 3, detail }) if detail == "429 slow down"),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_is_taken_that_would_end_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut attempts = 0;
        let outcome: Result<(), _> = policy(4, Duration::from_millis(100))
            .run(deadline, "m", || {
                attempts += 1;
                async { Err(LlmError::Transient("503 busy".into())) }
            })
            .await;
        assert_eq!(attempts, 1);
        assert!(
            matches!(outcome, Err(LlmError::RateLimitedAtDeadline(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempts = 0;
        let outcome: Result<(), _> = policy(4, Duration::from_millis(10))
            .run(deadline, "m", || {
                attempts += 1;
                async { Err(LlmError::InsufficientQuota("no credit".into())) }
            })
            .await;
        assert_eq!(attempts, 1);
        assert!(
            matches!(outcome, Err(LlmError::InsufficientQuota(_))),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_gets_only_the_time_left() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let outcome: Result<(), _> = policy(4, Duration::from_millis(10))
            .run(deadline, "m", std::future::pending)
            .await;
        assert!(matches!(outcome, Err(LlmError::Timeout)), "{outcome:?}");
    }
}
