//! Group commit: saves that arrive together become one transaction: one UPDATE per
//! conversation they go to (its message count, last activity and, while it has none,
//! its title), then one multi-row INSERT, and one commit for all of them. A conversation
//! that is gone (deleted meanwhile, or never the user's) fails only its own saves. A
//! batch is whatever is waiting when a writer becomes free, so a lone save goes out at
//! once and a burst shares its commits. Every caller gets its answer only after the
//! commit: a reply is never acknowledged before its history is safe.
//!
//! Exactly once: each row of a save with a request id carries the key
//! `<request id>/<place in the save>`, unique per user. The first attempt inserts
//! blindly (a repeat is rare); a repeat then fails the batch on the unique key, and
//! every retry, like every drain of the outbox, first looks the keys up and answers the
//! rows already there instead of inserting them again.

use std::sync::Arc;
use std::time::Duration;

use chat_proto::Role;
use mysql_async::Pool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::cache::CachedMessage;
use crate::error::HistoryError;
use crate::metrics;

mod transaction;

pub(crate) use transaction::write;

/// What one save committed: its rows with their ids, and whether this attempt wrote
/// them (`false`: an earlier save under the same request id had).
#[derive(Debug)]
pub struct Committed {
    pub messages: Vec<CachedMessage>,
    pub fresh: bool,
}

pub type Saved = Result<Committed, HistoryError>;

/// One message to save: its role, its text, and whether it was cut short.
pub type Row = (Role, String, bool);

/// What one `Save` commits.
#[derive(Debug, Clone)]
pub struct Save {
    pub user_id: String,
    pub conversation_id: String,
    /// The title the conversation takes if it has none yet (empty: no change).
    pub title: String,
    pub rows: Vec<Row>,
    /// The caller's id for the save (empty: none), the stem of its rows' keys.
    pub request_id: String,
    /// When the save was asked for: an outbox entry keeps its time when drained.
    pub created_at_ms: i64,
}

impl Save {
    /// The unique key of the save's row at `place`, when it has a request id.
    fn key(&self, place: usize) -> Option<String> {
        (!self.request_id.is_empty()).then(|| format!("{}/{place}", self.request_id))
    }
}

struct Job {
    save: Save,
    done: oneshot::Sender<Saved>,
}

#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts `writers` tasks, each committing batches of up to `max_rows` rows.
    pub fn start(pool: Pool, timeout: Duration, writers: usize, max_rows: usize) -> Self {
        let (jobs, queue) = mpsc::channel(4096);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(
                queue.clone(),
                pool.clone(),
                timeout,
                max_rows.max(1),
            ));
        }
        Self { jobs }
    }

    /// Saves the rows of one user into their conversation, answering once they are
    /// committed.
    pub async fn save(&self, save: Save) -> Saved {
        let (done, answer) = oneshot::channel();
        let job = Job { save, done };
        self.jobs
            .send(job)
            .await
            .map_err(|_| HistoryError::WriterStopped)?;
        answer.await.map_err(|_| HistoryError::WriterDroppedSave)?
    }
}

async fn write_batches(
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    pool: Pool,
    timeout: Duration,
    max_rows: usize,
) {
    while let Some(batch) = next_batch(&queue, max_rows).await {
        metrics::write_batch(batch.len());
        commit(&pool, timeout, batch).await;
    }
}

/// Waits for one job, then takes whatever else is already waiting, up to `max_rows`
/// rows; `None` once every sender is gone.
async fn next_batch(queue: &Mutex<mpsc::Receiver<Job>>, max_rows: usize) -> Option<Vec<Job>> {
    let mut queue = queue.lock().await;
    let first = queue.recv().await?;
    let mut rows = first.save.rows.len();
    let mut batch = vec![first];
    while rows < max_rows {
        match queue.try_recv() {
            Ok(job) => {
                rows += job.save.rows.len();
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Commits `batch` and answers each of its callers.
async fn commit(pool: &Pool, timeout: Duration, batch: Vec<Job>) {
    let saves: Vec<&Save> = batch.iter().map(|job| &job.save).collect();
    let error = match write(pool, timeout, &saves, false).await {
        Ok(saved) => {
            for (job, saved) in batch.into_iter().zip(saved) {
                let _ = job.done.send(saved);
            }
            return;
        }
        Err(error) => error,
    };
    let batch = match <[Job; 1]>::try_from(batch) {
        Ok([job]) if !is_duplicate(&error) => {
            let _ = job.done.send(Err(error));
            return;
        }
        Ok(job) => Vec::from(job),
        Err(batch) => batch,
    };
    // A repeated save, or one bad save among others: retry each on its own, looking
    // for rows an earlier attempt committed.
    for job in batch {
        let saved = match write(pool, timeout, &[&job.save], true).await {
            Ok(mut saved) => saved.pop().unwrap_or(Err(HistoryError::NoInsertId)),
            Err(error) => Err(error),
        };
        let _ = job.done.send(saved);
    }
}

/// Whether MySQL refused the INSERT on a unique key: a save repeated under its
/// request id.
fn is_duplicate(error: &HistoryError) -> bool {
    matches!(error, HistoryError::Mysql(mysql_async::Error::Server(server)) if server.code == 1062)
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Assistant => "assistant",
        _ => "user",
    }
}

pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
