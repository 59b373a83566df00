//! The inverted index in MySQL (tables from migrations 0007 and 0009), fed from the saved
//! history.
//!
//! One replica at a time indexes: the one holding the MySQL named lock
//! `chat_keyword_indexer:<md5 of the database name>` on a connection of its own (a replica that dies lets it go with
//! its connection). It reads the messages saved since the newest indexed one, less a
//! look-back of [`LOOKBACK_IDS`] ids for saves that committed out of id order, skips those
//! already indexed, and writes each message's row, its postings, its terms' message counts
//! and the user's totals in one transaction (the `write` module). A message is only ever indexed after it was saved, and at most once: the
//! message row is `INSERT IGNORE`d first and the postings follow only when it went in.
//!
//! Deleted messages (a conversation deleted, the history erased) are never returned: a
//! search joins `chat_history`. The same replica sweeps their rows out in the background,
//! a range of ids at a time.

mod write;

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool, Transaction, TxOpts};

use crate::error::KeywordError;
use crate::metrics;
use crate::terms::Analyzer;

/// How far below the newest indexed id the indexer looks again for messages whose save
/// committed after a later one's.
const LOOKBACK_IDS: i64 = 1000;
/// Ids examined per sweep step.
const SWEEP_SPAN: i64 = 5000;
/// The indexer lock's name, before the MD5 of the database's.
const LOCK: &str = "chat_keyword_indexer:";
/// The index's tables, every one with a `user_id` column.
const TABLES: [&str; 4] = [
    "keyword_postings",
    "keyword_terms",
    "keyword_docs",
    "keyword_users",
];

/// A saved message to index.
struct Saved {
    id: i64,
    user_id: String,
    text: String,
}

#[derive(Clone)]
pub struct Index {
    pub(crate) mysql: Pool,
    pub(crate) analyzer: Arc<Analyzer>,
    pub(crate) timeout: Duration,
    batch: u32,
}

impl Index {
    pub fn new(mysql: Pool, analyzer: Arc<Analyzer>, timeout: Duration, batch: u32) -> Self {
        Self {
            mysql,
            analyzer,
            timeout,
            batch: batch.max(1),
        }
    }

    /// Runs `work` on a pooled connection within the deadline.
    pub(crate) async fn with_conn<T>(
        &self,
        operation: &'static str,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, mysql_async::Error>,
    ) -> Result<T, KeywordError> {
        let call = async {
            let mut conn = self.mysql.get_conn().await?;
            work(&mut conn).await
        };
        let timed = async {
            tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| KeywordError::TimedOut)?
                .map_err(KeywordError::Mysql)
        };
        chat_common::observe::db(metrics::MYSQL, operation, timed).await
    }

    /// Indexes the messages saved since the last round; returns how many it indexed.
    pub async fn index_new(&self) -> Result<usize, KeywordError> {
        let batch = self.batch;
        let saved = self
            .with_conn("select", async |conn| {
                let newest: Option<i64> = conn
                    .query_first("SELECT COALESCE(MAX(message_id), 0) FROM keyword_docs")
                    .await?;
                let floor = newest.unwrap_or(0) - LOOKBACK_IDS;
                conn.exec_map(
                    "SELECT h.id, h.user_id, h.text FROM chat_history h \
                     LEFT JOIN keyword_docs d ON d.message_id = h.id \
                     WHERE h.id > ? AND d.message_id IS NULL ORDER BY h.id LIMIT ?",
                    (floor, batch),
                    |(id, user_id, text)| Saved { id, user_id, text },
                )
                .await
            })
            .await?;
        self.write(saved).await
    }

    /// Removes the index rows of messages that are no longer in the history, among the ids
    /// after `from` (a span of [`SWEEP_SPAN`]); returns where to go on from and how many
    /// messages were swept.
    pub async fn sweep(&self, from: i64) -> Result<(i64, usize), KeywordError> {
        let swept = self
            .with_conn("delete", async |conn| {
                let gone: Vec<(i64, String, i64)> = conn
                    .exec(
                        "SELECT d.message_id, d.user_id, d.terms FROM keyword_docs d \
                         LEFT JOIN chat_history h ON h.id = d.message_id \
                         WHERE d.message_id > ? AND d.message_id <= ? AND h.id IS NULL",
                        (from, from + SWEEP_SPAN),
                    )
                    .await?;
                let newest: Option<i64> = conn
                    .query_first("SELECT COALESCE(MAX(message_id), 0) FROM keyword_docs")
                    .await?;
                let mut tx = conn.start_transaction(TxOpts::default()).await?;
                for (message_id, user_id, terms) in &gone {
                    unindex(&mut tx, *message_id, user_id, *terms).await?;
                }
                tx.commit().await?;
                let next = if from + SWEEP_SPAN >= newest.unwrap_or(0) {
                    0
                } else {
                    from + SWEEP_SPAN
                };
                Ok((next, gone.len()))
            })
            .await?;
        metrics::swept(swept.1);
        Ok(swept)
    }

    /// Drops the index of one user (or everyone's) and builds it again from the history;
    /// returns how many messages it indexed.
    pub async fn reindex(&self, user_id: Option<&str>) -> Result<i64, KeywordError> {
        self.drop_index(user_id).await?;
        let mut after = 0_i64;
        let mut total = 0_i64;
        loop {
            let saved = self.saved_after(user_id, after).await?;
            let Some(last) = saved.last() else {
                break;
            };
            after = last.id;
            total += self.write(saved).await? as i64;
        }
        tracing::info!(
            user_id = user_id.unwrap_or("*"),
            messages = total,
            "reindexed"
        );
        Ok(total)
    }

    /// Deletes the index rows of one user (or everyone's), totals included.
    async fn drop_index(&self, user_id: Option<&str>) -> Result<(), KeywordError> {
        self.with_conn("delete", async |conn| {
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            match user_id {
                Some(user) => {
                    for table in TABLES {
                        tx.exec_drop(format!("DELETE FROM {table} WHERE user_id = ?"), (user,))
                            .await?;
                    }
                }
                None => {
                    for table in TABLES {
                        tx.query_drop(format!("DELETE FROM {table}")).await?;
                    }
                }
            }
            tx.commit().await
        })
        .await
    }

    /// The next batch of one user's (or everyone's) saved messages after id `after`.
    async fn saved_after(
        &self,
        user_id: Option<&str>,
        after: i64,
    ) -> Result<Vec<Saved>, KeywordError> {
        let batch = self.batch;
        self.with_conn("select", async |conn| {
            let map = |(id, user_id, text)| Saved { id, user_id, text };
            match user_id {
                Some(user) => {
                    conn.exec_map(
                        "SELECT id, user_id, text FROM chat_history \
                         WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
                        (user, after, batch),
                        map,
                    )
                    .await
                }
                None => {
                    conn.exec_map(
                        "SELECT id, user_id, text FROM chat_history \
                         WHERE id > ? ORDER BY id LIMIT ?",
                        (after, batch),
                        map,
                    )
                    .await
                }
            }
        })
        .await
    }

    /// The indexer: while this replica holds the lock, indexes new messages every
    /// `interval` (at once again after a full batch) and sweeps deleted ones; otherwise
    /// tries to take the lock every few intervals. Returns when `shutdown` resolves.
    pub async fn run(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut lock: Option<Conn> = None;
        let mut sweep_from = 0_i64;
        let mut round = 0_u64;
        loop {
            let mut pause = interval;
            lock = match lock.take() {
                Some(mut conn) => match conn.ping().await {
                    Ok(()) => Some(conn),
                    Err(error) => {
                        tracing::warn!(%error, "keyword indexer lost its lock connection");
                        metrics::leader(false);
                        None
                    }
                },
                None if round.is_multiple_of(5) => self.take_lock().await,
                None => None,
            };
            if lock.is_some() {
                match self.index_new().await {
                    Ok(indexed) if indexed as u32 >= self.batch => pause = Duration::ZERO,
                    Ok(_) => {}
                    Err(error) => {
                        metrics::index_failed();
                        tracing::warn!(%error, "indexing new messages failed");
                    }
                }
                if round.is_multiple_of(10) {
                    match self.sweep(sweep_from).await {
                        Ok((next, _)) => sweep_from = next,
                        Err(error) => tracing::warn!(%error, "sweeping deleted messages failed"),
                    }
                }
            }
            round += 1;
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        metrics::leader(false);
    }

    /// A connection holding the indexer lock, if no other replica holds it.
    async fn take_lock(&self) -> Option<Conn> {
        let attempt = async {
            // The pool resets every connection on return (`Statements::Reset`), so a lock
            // is never handed on with one.
            let mut conn = self.mysql.get_conn().await?;
            // Named locks are server-wide: the database's name makes it this index's
            // (another database on the same server has an indexer of its own).
            let held: Option<Option<i64>> = conn
                .exec_first("SELECT GET_LOCK(CONCAT(?, MD5(DATABASE())), 0)", (LOCK,))
                .await?;
            Ok::<_, mysql_async::Error>((held.flatten() == Some(1)).then_some(conn))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(Some(conn))) => {
                tracing::info!("this replica now indexes");
                metrics::leader(true);
                Some(conn)
            }
            Ok(Ok(None)) => None,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot take the indexer lock");
                None
            }
            Err(_) => None,
        }
    }
}

/// Removes one message of `user_id` with `terms` terms from the index, unless another
/// sweep did: its row, its terms' message counts, its postings and its part of the
/// user's totals.
async fn unindex(
    tx: &mut Transaction<'_>,
    message_id: i64,
    user_id: &str,
    terms: i64,
) -> Result<(), mysql_async::Error> {
    tx.exec_drop(
        "DELETE FROM keyword_docs WHERE message_id = ?",
        (message_id,),
    )
    .await?;
    if tx.affected_rows() == 0 {
        return Ok(());
    }
    tx.exec_drop(
        "UPDATE keyword_terms t JOIN keyword_postings p \
         ON p.user_id = t.user_id AND p.term = t.term \
         SET t.docs = t.docs - 1 WHERE p.message_id = ?",
        (message_id,),
    )
    .await?;
    // Only this message's terms can have reached zero.
    tx.exec_drop(
        "DELETE t FROM keyword_terms t JOIN keyword_postings p \
         ON p.user_id = t.user_id AND p.term = t.term \
         WHERE p.message_id = ? AND t.docs <= 0",
        (message_id,),
    )
    .await?;
    tx.exec_drop(
        "DELETE FROM keyword_postings WHERE message_id = ?",
        (message_id,),
    )
    .await?;
    tx.exec_drop(
        "UPDATE keyword_users SET docs = GREATEST(docs - 1, 0), \
         total_terms = GREATEST(total_terms - ?, 0) WHERE user_id = ?",
        (terms, user_id),
    )
    .await
}
