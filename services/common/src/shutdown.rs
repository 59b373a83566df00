//! Graceful shutdown within a bounded grace period (`SHUTDOWN_GRACE_SECS`).
//!
//! On SIGTERM a service stops taking new work at once (its readiness turns false, its
//! listener closes) and lets what it has finish. Work still running when the grace is
//! nearly over is *interrupted*: told to wrap up (a stream charges and saves what was
//! generated), with the rest of the grace to do so. Whatever is left after that is
//! dropped, so the process always exits within the grace, before the orchestrator's
//! SIGKILL (compose's `stop_grace_period`, Kubernetes' `terminationGracePeriodSeconds`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The default of every service's `SHUTDOWN_GRACE_SECS`.
pub const DEFAULT_GRACE_SECS: u64 = 20;

/// The most of the grace kept for interrupted work to settle and save.
const MAX_WRAP_UP: Duration = Duration::from_secs(5);

/// One process's shutdown: cheap to clone, shared by whatever takes part in it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    grace: Duration,
    /// Cancelled when the drain begins: readiness turns false, no new work is taken.
    draining: CancellationToken,
    /// Cancelled when the grace is nearly over: work still running wraps up now.
    interrupt: CancellationToken,
    /// Work that outlives the request that started it (the gateway's chat tasks).
    tasks: TaskTracker,
}

/// How a drain ended, for its last log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Tracked tasks still running when the drain began.
    pub tasks_at_start: usize,
    /// Tracked tasks that had to be interrupted at the deadline.
    pub interrupted: usize,
    /// Tracked tasks still running when the grace ran out (dropped with the process).
    pub abandoned: usize,
}

impl Shutdown {
    /// A shutdown of `grace_secs` seconds (at least one).
    pub fn new(grace_secs: u64) -> Self {
        Self {
            grace: Duration::from_secs(grace_secs.max(1)),
            draining: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The whole grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// How long work may run before it is interrupted: the grace less the time kept for
    /// wrapping up (a quarter of it, at most [`MAX_WRAP_UP`]).
    pub fn interrupt_after(&self) -> Duration {
        self.grace - (self.grace / 4).min(MAX_WRAP_UP)
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves when the drain begins.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    /// Resolves when work still running must wrap up (never before the drain).
    pub async fn interrupted(&self) {
        self.interrupt.cancelled().await;
    }

    /// Runs `work` as a task the drain waits for.
    ///
    /// The future is boxed first: a whole chat's state machine is tens of kilobytes,
    /// and tokio moves a task's future by value (into the task, then over it with the
    /// output, then out): copying it was the gateway's largest single cost
    /// (`memcpy`, 18 % of its instructions under callgrind). Boxed, a pointer moves.
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(Box::pin(work))
    }

    /// Runs the task `start` makes, in the current span, as one the drain waits for, and
    /// waits for the first thing it sends on the channel `start` is given (a stream's
    /// opening, say); `None` if the task ended without sending it.
    pub async fn open<T, F>(&self, start: impl FnOnce(oneshot::Sender<T>) -> F) -> Option<T>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        self.spawn(start(sender).in_current_span());
        receiver.await.ok()
    }

    /// Tracked tasks running now.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Begins the drain (readiness off); idempotent.
    pub fn begin(&self) {
        self.draining.cancel();
    }

    /// Begins the drain, then waits for `work` (the server's own: its connections or
    /// calls) and every tracked task; interrupts what runs past [`Self::interrupt_after`]
    /// and gives up on what is left at the end of the grace. `work` is dropped if it has
    /// not finished by then.
    pub async fn drain(&self, work: impl Future<Output = ()>) -> Drained {
        let started = Instant::now();
        self.begin();
        self.tasks.close();
        let tasks_at_start = self.tasks.len();
        let everything = async {
            work.await;
            self.tasks.wait().await;
        };
        let mut everything = std::pin::pin!(everything);
        let mut interrupted = 0;
        if tokio::time::timeout(self.interrupt_after(), everything.as_mut())
            .await
            .is_err()
        {
            interrupted = self.tasks.len();
            tracing::warn!(
                tasks = interrupted,
                after_ms = started.elapsed().as_millis() as u64,
                "grace nearly over: interrupting the work still running"
            );
            self.interrupt.cancel();
            let left = self.grace.saturating_sub(started.elapsed());
            if tokio::time::timeout(left, everything.as_mut())
                .await
                .is_err()
            {
                let abandoned = self.tasks.len();
                tracing::error!(
                    tasks = abandoned,
                    "grace over: stopping with work unfinished"
                );
                return Drained {
                    tasks_at_start,
                    interrupted,
                    abandoned,
                };
            }
        }
        Drained {
            tasks_at_start,
            interrupted,
            abandoned: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_grace_at_most_five_seconds_is_kept_for_wrapping_up() {
        assert_eq!(Shutdown::new(20).interrupt_after(), Duration::from_secs(15));
        assert_eq!(Shutdown::new(60).interrupt_after(), Duration::from_secs(55));
        assert_eq!(
            Shutdown::new(2).interrupt_after(),
            Duration::from_millis(1500)
        );
        assert_eq!(Shutdown::new(0).grace(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_is_waited_for() {
        let shutdown = Shutdown::new(10);
        let (done, finished) = tokio::sync::oneshot::channel();
        shutdown.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = done.send(());
        });
        let drained = shutdown.drain(async {}).await;
        assert!(shutdown.is_draining());
        assert_eq!(
            drained,
            Drained {
                tasks_at_start: 1,
                interrupted: 0,
                abandoned: 0
            }
        );
        assert!(finished.await.is_ok(), "the task ran to its end");
    }

    #[tokio::test(start_paused = true)]
    async fn work_past_the_deadline_is_interrupted_and_then_abandoned() {
        let shutdown = Shutdown::new(8);
        // Wraps up when interrupted.
        let polite = shutdown.clone();
        shutdown.spawn(async move { polite.interrupted().await });
        // Never does.
        shutdown.spawn(std::future::pending::<()>());
        let started = tokio::time::Instant::now();
        let drained = shutdown.drain(async {}).await;
        assert_eq!(
            drained,
            Drained {
                tasks_at_start: 2,
                interrupted: 2,
                abandoned: 1
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(8), "the whole grace");
    }
}
