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
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts, Value};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::cache::CachedMessage;
use crate::error::HistoryError;
use crate::metrics;

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

/// One transaction for `saves`: each answers its saved rows, or that its conversation
/// is gone. `Err` when the transaction itself failed. With `find_earlier`, the rows an
/// earlier save under the same request id committed are answered, not inserted again.
pub(crate) async fn write(
    pool: &Pool,
    timeout: Duration,
    saves: &[&Save],
    find_earlier: bool,
) -> Result<Vec<Saved>, HistoryError> {
    let work = async {
        let mut connection = pool.get_conn().await?;
        let mut transaction = connection.start_transaction(TxOpts::default()).await?;
        let earlier = if find_earlier {
            find_committed(&mut transaction, saves).await?
        } else {
            vec![None; saves.len()]
        };
        let new: Vec<&Save> = saves
            .iter()
            .zip(&earlier)
            .filter(|(_, earlier)| earlier.is_none())
            .map(|(save, _)| *save)
            .collect();
        let missing = touch_conversations(&mut transaction, &new).await?;
        let kept: Vec<&Save> = new
            .iter()
            .copied()
            .filter(|save| !is_missing(&missing, save))
            .collect();
        let first_id = if kept.is_empty() {
            None
        } else {
            let (sql, params) = insert_statement(&kept);
            transaction.exec_drop(sql, params).await?;
            transaction.last_insert_id()
        };
        transaction.commit().await?;
        Ok::<_, mysql_async::Error>((earlier, missing, first_id))
    };
    let (earlier, missing, first_id) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HistoryError::WriteTimedOut)?
        .map_err(HistoryError::Mysql)?;
    // One multi-row INSERT gets consecutive ids ("simple insert" in InnoDB's terms).
    let mut next_id = match first_id {
        Some(id) => id as i64,
        None if saves
            .iter()
            .zip(&earlier)
            .any(|(save, earlier)| earlier.is_none() && !is_missing(&missing, save)) =>
        {
            return Err(HistoryError::NoInsertId);
        }
        None => 0,
    };
    Ok(saves
        .iter()
        .zip(earlier)
        .map(|(save, earlier)| {
            if let Some(messages) = earlier {
                return Ok(Committed {
                    messages,
                    fresh: false,
                });
            }
            if is_missing(&missing, save) {
                return Err(HistoryError::ConversationNotFound);
            }
            let messages = save
                .rows
                .iter()
                .map(|(role, text, incomplete)| {
                    let id = next_id;
                    next_id += 1;
                    CachedMessage {
                        id,
                        role: role_name(*role).to_owned(),
                        text: text.clone(),
                        created_at_unix_ms: save.created_at_ms,
                        incomplete: *incomplete,
                    }
                })
                .collect();
            Ok(Committed {
                messages,
                fresh: true,
            })
        })
        .collect())
}

/// For each save, the rows an earlier save under its request id committed, if any.
async fn find_committed(
    transaction: &mut mysql_async::Transaction<'_>,
    saves: &[&Save],
) -> Result<Vec<Option<Vec<CachedMessage>>>, mysql_async::Error> {
    let mut found = Vec::with_capacity(saves.len());
    for save in saves {
        let keys: Vec<String> = (0..save.rows.len())
            .filter_map(|place| save.key(place))
            .collect();
        if keys.is_empty() {
            found.push(None);
            continue;
        }
        let placeholders = vec!["?"; keys.len()].join(", ");
        let sql = format!(
            "SELECT save_key, id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
             FROM chat_history WHERE user_id = ? AND save_key IN ({placeholders})"
        );
        let mut params: Vec<Value> = vec![save.user_id.as_str().into()];
        params.extend(keys.iter().map(|key| Value::from(key.as_str())));
        let rows: Vec<(String, i64, String, String, i64, bool)> =
            transaction.exec(sql, params).await?;
        if rows.is_empty() {
            found.push(None);
            continue;
        }
        // In the save's order, whatever order MySQL answered in.
        let messages = keys
            .iter()
            .filter_map(|key| rows.iter().find(|row| row.0 == *key))
            .map(
                |(_, id, role, text, created_at_unix_ms, incomplete)| CachedMessage {
                    id: *id,
                    role: role.clone(),
                    text: text.clone(),
                    created_at_unix_ms: *created_at_unix_ms,
                    incomplete: *incomplete,
                },
            )
            .collect();
        found.push(Some(messages));
    }
    Ok(found)
}

/// Conversations not found, each with the user who named it.
type Missing = Vec<(String, String)>;

fn is_missing(missing: &Missing, save: &Save) -> bool {
    missing
        .iter()
        .any(|(id, user_id)| *id == save.conversation_id && *user_id == save.user_id)
}

/// Counts the new messages into their conversations, in id order (so two batches lock
/// them in the same order), and answers the conversations that are not there, or not
/// their user's.
async fn touch_conversations(
    transaction: &mut mysql_async::Transaction<'_>,
    saves: &[&Save],
) -> Result<Missing, mysql_async::Error> {
    let mut conversations: Vec<(&str, &str, usize, &str, i64)> = Vec::new();
    for save in saves {
        match conversations
            .iter_mut()
            .find(|(id, user, ..)| *id == save.conversation_id && *user == save.user_id)
        {
            Some((_, _, count, title, last_ms)) => {
                *count += save.rows.len();
                if title.is_empty() {
                    *title = &save.title;
                }
                *last_ms = (*last_ms).max(save.created_at_ms);
            }
            None => conversations.push((
                &save.conversation_id,
                &save.user_id,
                save.rows.len(),
                &save.title,
                save.created_at_ms,
            )),
        }
    }
    conversations.sort_unstable_by_key(|(id, ..)| *id);
    let mut missing = Vec::new();
    for (id, user_id, count, title, now_ms) in conversations {
        transaction
            .exec_drop(
                "UPDATE conversations
                 SET message_count = message_count + ?,
                     updated_at = GREATEST(updated_at, FROM_UNIXTIME(? / 1000)),
                     title = IF(title = '', ?, title)
                 WHERE id = ? AND user_id = ?",
                (count as u64, now_ms, title, id, user_id),
            )
            .await?;
        // The count always changes, so a row found is a row affected.
        if transaction.affected_rows() == 0 {
            missing.push((id.to_owned(), user_id.to_owned()));
        }
    }
    Ok(missing)
}

/// One INSERT for every row of `saves`, in order.
fn insert_statement(saves: &[&Save]) -> (String, Vec<Value>) {
    let rows: usize = saves.iter().map(|save| save.rows.len()).sum();
    let placeholders = vec!["(?, ?, ?, ?, FROM_UNIXTIME(? / 1000), ?, ?)"; rows].join(", ");
    let sql = format!(
        "INSERT INTO chat_history (user_id, conversation_id, role, text, created_at, incomplete, save_key) VALUES {placeholders}"
    );
    let mut params = Vec::with_capacity(rows * 7);
    for save in saves {
        for (place, (role, text, incomplete)) in save.rows.iter().enumerate() {
            params.push(Value::from(save.user_id.as_str()));
            params.push(Value::from(save.conversation_id.as_str()));
            params.push(Value::from(role_name(*role)));
            params.push(Value::from(text.as_str()));
            params.push(Value::from(save.created_at_ms));
            params.push(Value::from(*incomplete));
            params.push(Value::from(save.key(place)));
        }
    }
    (sql, params)
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
