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
use tonic::Status;

use crate::cache::CachedMessage;

type Saved = Result<Vec<CachedMessage>, Status>;

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
            .map_err(|_| Status::unavailable("history writer stopped"))?;
        answer
            .await
            .map_err(|_| Status::internal("history writer dropped the save"))?
    }
}

async fn write_batches(
    queue: Arc<Mutex<mpsc::Receiver<Job>>>,
    pool: Pool,
    timeout: Duration,
    max_rows: usize,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
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
            batch
        };
        metrics::histogram!("history_write_batch_size").record(batch.len() as f64);
        match insert(&pool, timeout, &batch).await {
            Ok(saved) => {
                for (job, saved) in batch.into_iter().zip(saved) {
                    let _ = job.done.send(Ok(saved));
                }
            }
            // One bad save must not fail the others: retry each on its own.
            Err(_) if batch.len() > 1 => {
                for job in batch {
                    let saved = insert(&pool, timeout, std::slice::from_ref(&job))
                        .await
                        .map(|mut saved| saved.pop().unwrap_or_default());
                    let _ = job.done.send(saved);
                }
            }
            Err(status) => {
                for job in batch {
                    let _ = job.done.send(Err(status.clone()));
                }
            }
        }
    }
}

/// One INSERT for every row of `batch`, in order; answers the saved rows of each job.
async fn insert(
    pool: &Pool,
    timeout: Duration,
    batch: &[Job],
) -> Result<Vec<Vec<CachedMessage>>, Status> {
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
        .map_err(|_| Status::unavailable("history store: MySQL write timed out"))?
        .map_err(|error| Status::unavailable(format!("history store failed: {error}")))?
        .ok_or_else(|| Status::internal("history store: no insert id"))?;
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
