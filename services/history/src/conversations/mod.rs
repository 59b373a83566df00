//! Conversations: a user's messages in threads. Every query names the user, so another
//! user's conversation is simply not found, exactly like an unknown or malformed id.
//!
//! Here: finding, creating and renaming one conversation. Listing them, a page at a
//! time, is in `pages.rs`; deleting them in `removal.rs`.

use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{
    Conversation, ConversationRequest, CreateConversationRequest, LatestConversationRequest,
    RenameConversationRequest, SaveRequest,
};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::History;
use crate::error::HistoryError;
use crate::metrics;
use crate::writer::unix_now_ms;

mod fields;
mod pages;
mod removal;

pub use fields::{MAX_KEY_CHARS, MAX_TITLE_CHARS, parse_id, title_from_message, user_title};

/// The columns of a [`Conversation`], in its order.
const COLUMNS: &str = "id, title, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), \
     CAST(UNIX_TIMESTAMP(updated_at) * 1000 AS SIGNED), message_count";

type ConversationRow = (String, String, i64, i64, i64);

fn conversation((id, title, created, updated, count): ConversationRow) -> Conversation {
    Conversation {
        id,
        title,
        created_at_unix_ms: created,
        updated_at_unix_ms: updated,
        message_count: count,
    }
}

impl History {
    /// Runs `work` on a pooled connection within `patience` times the usual timeout.
    async fn with_mysql<T>(
        &self,
        operation: &'static str,
        patience: u32,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, HistoryError>,
    ) -> Result<T, HistoryError> {
        let timeout: Duration = self.timeout() * patience;
        let mut connection = self.mysql().await?;
        let timed = async {
            tokio::time::timeout(timeout, work(&mut connection))
                .await
                .map_err(|_| HistoryError::ReadTimedOut)?
        };
        let outcome = chat_common::observe::db(metrics::MYSQL, operation, timed).await;
        match &outcome {
            Err(error) if error.is_outage() => self.breaker().failed_with(error),
            _ => self.breaker().succeeded(),
        }
        outcome
    }

    /// The conversation a save goes to: the one it names by id (checked when the save
    /// commits), the one with its key (created on first use), or a new one.
    pub(crate) async fn conversation_for_save(
        &self,
        request: &SaveRequest,
    ) -> Result<String, HistoryError> {
        let user_id = request.user_id.as_str();
        if !request.conversation_id.is_empty() {
            return Ok(parse_id(&request.conversation_id)?.to_owned());
        }
        if request.conversation_key.is_empty() {
            let created = self
                .with_mysql("insert", 1, async |connection| {
                    insert(connection, user_id, "", None).await
                })
                .await?;
            return Ok(created.id);
        }
        let key = request.conversation_key.as_str();
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(HistoryError::BadConversationKey);
        }
        self.with_mysql("select", 1, async |connection| {
            let find = "SELECT id FROM conversations WHERE user_id = ? AND external_key = ?";
            if let Some(id) = connection.exec_first(find, (user_id, key)).await? {
                return Ok(id);
            }
            // Two first uses at once: the unique key keeps one, and both find it.
            insert(connection, user_id, "", Some(key)).await?;
            connection
                .exec_first(find, (user_id, key))
                .await?
                .ok_or(HistoryError::ConversationNotFound)
        })
        .await
    }

    /// Whether the user has this conversation: what a read of its messages checks first.
    pub(crate) async fn owns(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), HistoryError> {
        self.get(user_id, conversation_id).await.map(|_| ())
    }

    async fn get(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<Conversation, HistoryError> {
        let conversation_id = parse_id(conversation_id)?;
        self.with_mysql("select", 1, async |connection| {
            find(connection, user_id, conversation_id).await
        })
        .await
    }

    pub(crate) async fn new_conversation(
        &self,
        request: &CreateConversationRequest,
    ) -> Result<Conversation, HistoryError> {
        validate_user_id(&request.user_id)?;
        let title = match request.title.is_empty() {
            true => String::new(),
            false => user_title(&request.title)?,
        };
        let created = self
            .with_mysql("insert", 1, async |connection| {
                insert(connection, &request.user_id, &title, None).await
            })
            .await?;
        // The newest conversation is the latest until another gets a message.
        if let Err(error) = self.cache().set_latest(&request.user_id, &created.id).await {
            tracing::warn!(%error, "recording the new conversation as the latest failed; dropping the old record");
            if let Err(error) = self.cache().forget_latest(&request.user_id).await {
                tracing::warn!(%error, "the latest conversation's record may be stale");
            }
        }
        Ok(created)
    }

    pub(crate) async fn conversation(
        &self,
        request: &ConversationRequest,
    ) -> Result<Conversation, HistoryError> {
        validate_user_id(&request.user_id)?;
        self.get(&request.user_id, &request.conversation_id).await
    }

    /// The most recently active conversation, or a new one. Two first chats at once
    /// may make two; each keeps its own messages.
    pub(crate) async fn latest(
        &self,
        request: &LatestConversationRequest,
    ) -> Result<Conversation, HistoryError> {
        validate_user_id(&request.user_id)?;
        let user_id = request.user_id.as_str();
        let latest = self
            .with_mysql("select", 1, async |connection| {
                let latest: Option<ConversationRow> = connection
                    .exec_first(
                        format!(
                            "SELECT {COLUMNS} FROM conversations WHERE user_id = ?
                         ORDER BY updated_at DESC, id DESC LIMIT 1"
                        ),
                        (user_id,),
                    )
                    .await?;
                match latest {
                    Some(row) => Ok(conversation(row)),
                    None => insert(connection, user_id, "", None).await,
                }
            })
            .await;
        match latest {
            // MySQL is away: the one the user last saved to, as the cache knows it, so
            // chats through an outage stay in their conversation.
            Err(error) if error.is_outage() => match self.cache().latest(user_id).await {
                Ok(Some(id)) => Ok(Conversation {
                    id,
                    ..Conversation::default()
                }),
                _ => Err(error),
            },
            latest => latest,
        }
    }

    pub(crate) async fn rename(
        &self,
        request: &RenameConversationRequest,
    ) -> Result<Conversation, HistoryError> {
        validate_user_id(&request.user_id)?;
        let conversation_id = parse_id(&request.conversation_id)?;
        let title = user_title(&request.title)?;
        let user_id = request.user_id.as_str();
        self.with_mysql("update", 1, async |connection| {
            connection
                .exec_drop(
                    "UPDATE conversations SET title = ? WHERE id = ? AND user_id = ?",
                    (&title, conversation_id, user_id),
                )
                .await?;
            find(connection, user_id, conversation_id).await
        })
        .await
    }
}

async fn find(
    connection: &mut Conn,
    user_id: &str,
    conversation_id: &str,
) -> Result<Conversation, HistoryError> {
    let row: Option<ConversationRow> = connection
        .exec_first(
            format!("SELECT {COLUMNS} FROM conversations WHERE id = ? AND user_id = ?"),
            (conversation_id, user_id),
        )
        .await?;
    row.map(conversation)
        .ok_or(HistoryError::ConversationNotFound)
}

/// A new conversation; `key` is a client's own name for it.
async fn insert(
    connection: &mut Conn,
    user_id: &str,
    title: &str,
    key: Option<&str>,
) -> Result<Conversation, HistoryError> {
    let id = uuid::Uuid::new_v4().to_string();
    let now_ms = unix_now_ms();
    let sql = "INSERT INTO conversations
           (id, user_id, title, external_key, created_at, updated_at, message_count)
         VALUES (?, ?, ?, ?, FROM_UNIXTIME(? / 1000), FROM_UNIXTIME(? / 1000), 0)";
    let params = (id.as_str(), user_id, title, key, now_ms, now_ms);
    match key {
        // The key's unique index may already hold it: then the other insert won.
        Some(_) => {
            connection
                .exec_drop(format!("{sql} ON DUPLICATE KEY UPDATE id = id"), params)
                .await?
        }
        None => connection.exec_drop(sql, params).await?,
    }
    Ok(Conversation {
        id,
        title: title.to_owned(),
        created_at_unix_ms: now_ms,
        updated_at_unix_ms: now_ms,
        message_count: 0,
    })
}
