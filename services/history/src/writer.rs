//! Group commit: saves that arrive together become one multi-row INSERT, one round trip
//! and one commit for all of them. A batch is whatever is waiting when a writer becomes
//! free, so a lone save goes out at once and a burst shares its commits. Every caller
//! gets its answer only after the commit: a reply is never acknowledged before its
//! history is safe.

use std::sync::Arc;
use std::time::Duration;

use chat_proto::Role;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::cache::CachedMessage;
use crate::error::HistoryError;
use crate::metrics;

type Saved = Result<Vec<CachedMessage>, HistoryError>;

/// One message to save: its role, its text, and whether it was cut short.
pub type Row = (Role, String, bool);

struct Job {
    user_id: String,
    rows: Vec<Row>,
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

    /// Saves `rows` of one user, answering once they are committed.
    pub async fn save(&self, user_id: &str, rows: Vec<Row>) -> Saved {
        let (done, answer) = oneshot::channel();
        let job = Job {
            user_id: user_id.to_owned(),
            rows,
            done,
        };
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
    let mut rows = first.rows.len();
    let mut batch = vec![first];
    while rows < max_rows {
        match queue.try_recv() {
            Ok(job) => {
                rows += job.rows.len();
                batch.push(job);
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Inserts `batch` and answers each of its callers.
async fn commit(pool: &Pool, timeout: Duration, batch: Vec<Job>) {
    let error = match insert(pool, timeout, &batch).await {
        Ok(saved) => {
            for (job, saved) in batch.into_iter().zip(saved) {
                let _ = job.done.send(Ok(saved));
            }
            return;
        }
        Err(error) => error,
    };
    match <[Job; 1]>::try_from(batch) {
        Ok([job]) => {
            let _ = job.done.send(Err(error));
        }
        // One bad save must not fail the others: retry each on its own.
        Err(batch) => {
            for job in batch {
                let saved = insert(pool, timeout, std::slice::from_ref(&job))
                    .await
                    .map(|mut saved| saved.pop().unwrap_or_default());
                let _ = job.done.send(saved);
            }
        }
    }
}

/// One INSERT for every row of `batch`, in order; answers the saved rows of each job.
async fn insert(
    pool: &Pool,
    timeout: Duration,
    batch: &[Job],
) -> Result<Vec<Vec<CachedMessage>>, HistoryError> {
    let now_ms = unix_now_ms();
    let rows: usize = batch.iter().map(|job| job.rows.len()).sum();
    let placeholders = vec!["(?, ?, ?, FROM_UNIXTIME(? / 1000), ?)"; rows].join(", ");
    let sql = format!(
        "INSERT INTO chat_history (user_id, role, text, created_at, incomplete) VALUES {placeholders}"
    );
    let mut params = Vec::with_capacity(rows * 5);
    for job in batch {
        for (role, text, incomplete) in &job.rows {
            params.push(Value::from(job.user_id.as_str()));
            params.push(Value::from(role_name(*role)));
            params.push(Value::from(text.as_str()));
            params.push(Value::from(now_ms));
            params.push(Value::from(*incomplete));
        }
    }
    let write = async {
        let mut connection = pool.get_conn().await?;
        connection.exec_drop(sql, params).await?;
        Ok::<_, mysql_async::Error>(connection.last_insert_id())
    };
    let first_id = tokio::time::timeout(timeout, write)
        .await
        .map_err(|_| HistoryError::WriteTimedOut)?
        .map_err(HistoryError::Mysql)?
        .ok_or(HistoryError::NoInsertId)?;
    // One multi-row INSERT gets consecutive ids ("simple insert" in InnoDB's terms).
    let mut next_id = first_id as i64;
    Ok(batch
        .iter()
        .map(|job| {
            job.rows
                .iter()
                .map(|(role, text, incomplete)| {
                    let id = next_id;
                    next_id += 1;
                    CachedMessage {
                        id,
                        role: role_name(*role).to_owned(),
                        text: text.clone(),
                        created_at_unix_ms: now_ms,
                        incomplete: *incomplete,
                    }
                })
                .collect()
        })
        .collect())
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Assistant => "assistant",
        _ => "user",
    }
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
