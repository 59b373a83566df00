//! The drainer: writes the outbox to MySQL once it answers again. One replica at a time
//! drains (it holds the outbox lock), a user's entries oldest first, a batch of them in
//! one transaction through the writer's exactly-once path: an entry whose save did
//! commit after all (it timed out on the way back) is found by its keys and not written
//! twice. Drained entries leave the stream, and the user's cached lists, which showed
//! them under provisional ids, are dropped so the next read has the real ones.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::History;
use crate::cache::CacheError;
use crate::error::HistoryError;
use crate::metrics::{self, DrainOutcome};
use crate::outbox::{Entry, Pending};
use crate::writer::{self, Save};

/// How often the drainer looks when nothing woke it.
const IDLE: Duration = Duration::from_millis(500);
/// Users per round, and entries per transaction.
const USERS: usize = 100;
const ENTRIES: usize = 32;

#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error("outbox: {0}")]
    Redis(#[from] CacheError),
    #[error(transparent)]
    Mysql(#[from] HistoryError),
}

/// Drains for as long as the service runs (`History::close` lets go of the lock);
/// woken at once when a save is queued, and every [`IDLE`] anyway (another replica
/// may have queued).
pub async fn run(history: History, token: String) {
    loop {
        match drain(&history, &token).await {
            Ok(()) => {}
            Err(DrainError::Mysql(error)) => {
                tracing::debug!(%error, "outbox waits for mysql");
            }
            Err(error) => tracing::warn!(%error, "draining the outbox failed"),
        }
        tokio::select! {
            () = history.queued() => {
                // A burst of saves queues together: drain them together.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            () = tokio::time::sleep(IDLE) => {}
        }
    }
}

/// One round: every listed user's entries, while MySQL takes them.
async fn drain(history: &History, token: &str) -> Result<(), DrainError> {
    let outbox = history.outbox();
    let users = outbox.users(USERS).await?;
    metrics::outbox_users(outbox.user_count().await?);
    if users.is_empty() || history.breaker().open() {
        return Ok(());
    }
    if !outbox.lock(token).await? {
        return Ok(());
    }
    for user_id in users {
        drain_user(history, &user_id).await?;
        outbox.lock(token).await?;
    }
    metrics::outbox_users(outbox.user_count().await?);
    Ok(())
}

async fn drain_user(history: &History, user_id: &str) -> Result<(), DrainError> {
    let outbox = history.outbox();
    loop {
        let entries = outbox.oldest(user_id, ENTRIES).await?;
        if entries.is_empty() {
            outbox.unlist_if_empty(user_id).await?;
            return Ok(());
        }
        let written = write(history, &entries).await;
        if let Err(error) = &written {
            history.breaker().failed_with(error);
            tracing::warn!(%error, user_id, "mysql cannot take the outbox yet");
        }
        let conversations = written?;
        history.breaker().succeeded();
        outbox.remove(user_id, &entries).await?;
        if let Err(error) = history.cache().forget(user_id, &conversations).await {
            tracing::warn!(%error, user_id, "dropping the lists with provisional ids failed");
        }
    }
}

/// Writes the entries in one transaction, oldest first; answers the conversations they
/// went to. Entries MySQL will never take are dropped, loudly.
async fn write(history: &History, entries: &Pending) -> Result<Vec<String>, HistoryError> {
    let mut saves = Vec::with_capacity(entries.len());
    for (_, entry) in entries {
        let conversation_id = conversation(history, entry).await?;
        saves.push(entry.save(&conversation_id));
    }
    let refs: Vec<&Save> = saves.iter().collect();
    let pool = history.mysql_pool();
    let saved = writer::write(&pool, history.timeout(), &refs, true).await?;
    for ((stream_id, entry), saved) in entries.iter().zip(saved) {
        match saved {
            Ok(committed) if committed.fresh => metrics::outbox_drained(DrainOutcome::Saved),
            Ok(_) => metrics::outbox_drained(DrainOutcome::Repeat),
            Err(error) => {
                metrics::outbox_drained(DrainOutcome::Dropped);
                tracing::error!(
                    %error,
                    stream_id,
                    user_id = %entry.user_id,
                    conversation_id = %entry.conversation_id,
                    request_id = %entry.request_id,
                    "an outbox entry cannot be saved; dropped"
                );
            }
        }
    }
    let mut conversations: Vec<String> =
        saves.into_iter().map(|save| save.conversation_id).collect();
    conversations.sort_unstable();
    conversations.dedup();
    Ok(conversations)
}

/// The conversation an entry goes to: its own (made now if it was new when queued), or
/// the user's with its key, found or made.
async fn conversation(history: &History, entry: &Entry) -> Result<String, HistoryError> {
    if entry.create_conversation {
        let mut connection = history.mysql().await?;
        // Made once: a second drain of the same entry finds it.
        let create = connection.exec_drop(
            "INSERT IGNORE INTO conversations
                   (id, user_id, title, created_at, updated_at, message_count)
                 VALUES (?, ?, '', FROM_UNIXTIME(? / 1000), FROM_UNIXTIME(? / 1000), 0)",
            (
                entry.conversation_id.as_str(),
                entry.user_id.as_str(),
                entry.created_at_ms,
                entry.created_at_ms,
            ),
        );
        tokio::time::timeout(history.timeout(), create)
            .await
            .map_err(|_| HistoryError::WriteTimedOut)??;
        return Ok(entry.conversation_id.clone());
    }
    if !entry.conversation_id.is_empty() {
        return Ok(entry.conversation_id.clone());
    }
    let request = chat_proto::SaveRequest {
        user_id: entry.user_id.clone(),
        conversation_key: entry.conversation_key.clone(),
        ..chat_proto::SaveRequest::default()
    };
    history.conversation_for_save(&request).await
}
