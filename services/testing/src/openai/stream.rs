//! A scripted streamed answer: paced, cut short, or abandoned by its client, and the
//! last of these counted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::scripted::Script;

/// The events of one streamed answer and how they go out.
pub(super) struct StreamPlan {
    pub(super) events: Vec<String>,
    /// Pause before every event after the role chunk (so before the first word too).
    pub(super) pace: Duration,
    /// Index of the event before which the connection is cut, if it is.
    pub(super) cut_at: Option<usize>,
}

impl StreamPlan {
    pub(super) fn into_stream(
        self,
        script: Arc<Script>,
    ) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send {
        let guard = CancelGuard {
            script,
            finished: false,
        };
        futures::stream::unfold(
            (self, 0usize, guard),
            |(plan, index, mut guard)| async move {
                if plan.cut_at == Some(index) {
                    // Let what was sent reach the client first, as on a real network.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    guard.finished = true; // a deliberate cut, not a cancellation
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
                    return Some((Err(cut), (plan, usize::MAX, guard)));
                }
                let event = plan.events.get(index)?.clone();
                if index > 0 && !plan.pace.is_zero() {
                    tokio::time::sleep(plan.pace).await;
                }
                if index + 1 == plan.events.len() {
                    guard.finished = true;
                }
                Some((Ok(event), (plan, index + 1, guard)))
            },
        )
    }
}

/// Counts a stream dropped before its last event: the client cancelled it.
struct CancelGuard {
    script: Arc<Script>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.script.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}
