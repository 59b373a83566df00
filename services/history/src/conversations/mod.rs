//! Conversations: a user's messages in threads. Every query names the user, so another
//! user's conversation is simply not found, exactly like an unknown or malformed id.
//!
//! Listing is keyset-paginated: conversations by last activity (`updated_at`, then id,
//! both descending, through the `(user_id, updated_at, id)` index), messages by id.
//! A cursor is the position of the last item of the page before. A conversation with
//! activity while someone pages moves to the front; it is not listed twice on the way.

use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{
    Conversation, ConversationRequest, CreateConversationRequest, EraseUserRequest,
    EraseUserResponse, LatestConversationRequest, ListConversationMessagesRequest,
    ListConversationMessagesResponse, ListConversationsRequest, ListConversationsResponse,
    RenameConversationRequest, SaveRequest, StoredMessage,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, TxOpts};

use crate::History;
use crate::error::HistoryError;
use crate::metrics;
use crate::store::role_from_name;
use crate::writer::unix_now_ms;

mod fields;

pub use fields::{MAX_KEY_CHARS, MAX_TITLE_CHARS, parse_id, title_from_message, user_title};
use fields::{conversation_cursor, page_size, parse_conversation_cursor, parse_message_cursor};

const DEFAULT_CONVERSATIONS: u32 = 20;
const MAX_CONVERSATIONS: u32 = 100;
const DEFAULT_MESSAGES: u32 = 50;
const MAX_MESSAGES: u32 = 200;
/// Deletes may touch many rows: they get this many times the usual timeout.
const DELETE_PATIENCE: u32 = 10;

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
        self.with_mysql("insert", 1, async |connection| {
            insert(connection, &request.user_id, &title, None).await
        })
        .await
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

    pub(crate) async fn conversations_page(
        &self,
        request: &ListConversationsRequest,
    ) -> Result<ListConversationsResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let limit = page_size(request.limit, DEFAULT_CONVERSATIONS, MAX_CONVERSATIONS);
        let after = match request.cursor.as_str() {
            "" => None,
            cursor => Some(parse_conversation_cursor(cursor)?),
        };
        let user_id = request.user_id.as_str();
        // One more than the page, to know whether there is a next one.
        let rows: Vec<ConversationRow> = self
            .with_mysql("select", 1, async |connection| {
                let rows = match after {
                    None => {
                        connection
                            .exec(
                                format!(
                                    "SELECT {COLUMNS} FROM conversations WHERE user_id = ?
                                     ORDER BY updated_at DESC, id DESC LIMIT ?"
                                ),
                                (user_id, limit + 1),
                            )
                            .await?
                    }
                    Some((updated, id)) => {
                        connection
                            .exec(
                                format!(
                                    "SELECT {COLUMNS} FROM conversations
                                     WHERE user_id = ?
                                       AND (updated_at < FROM_UNIXTIME(? / 1000)
                                            OR (updated_at = FROM_UNIXTIME(? / 1000) AND id < ?))
                                     ORDER BY updated_at DESC, id DESC LIMIT ?"
                                ),
                                (user_id, updated, updated, id, limit + 1),
                            )
                            .await?
                    }
                };
                Ok(rows)
            })
            .await?;
        let mut conversations: Vec<Conversation> = rows.into_iter().map(conversation).collect();
        let more = conversations.len() > limit as usize;
        conversations.truncate(limit as usize);
        let next_cursor = match conversations.last() {
            Some(last) if more => conversation_cursor(last),
            _ => String::new(),
        };
        Ok(ListConversationsResponse {
            conversations,
            next_cursor,
        })
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

    /// Deletes the conversation's messages and itself in one transaction, then its
    /// cached lists. The cache is cleared even when MySQL had nothing (a retry after
    /// Redis failed): the keys are the caller's own.
    pub(crate) async fn delete(&self, request: &ConversationRequest) -> Result<(), HistoryError> {
        validate_user_id(&request.user_id)?;
        let conversation_id = parse_id(&request.conversation_id)?;
        let user_id = request.user_id.as_str();
        let found = self
            .with_mysql("delete", DELETE_PATIENCE, async |connection| {
                let mut transaction = connection.start_transaction(TxOpts::default()).await?;
                let found: Option<String> = transaction
                    .exec_first(
                        "SELECT id FROM conversations WHERE id = ? AND user_id = ? FOR UPDATE",
                        (conversation_id, user_id),
                    )
                    .await?;
                if found.is_some() {
                    transaction
                        .exec_drop(
                            "DELETE FROM chat_history WHERE user_id = ? AND conversation_id = ?",
                            (user_id, conversation_id),
                        )
                        .await?;
                    transaction
                        .exec_drop(
                            "DELETE FROM conversations WHERE id = ? AND user_id = ?",
                            (conversation_id, user_id),
                        )
                        .await?;
                }
                transaction.commit().await?;
                Ok(found.is_some())
            })
            .await?;
        if let Err(error) = self
            .cache()
            .forget(user_id, &[conversation_id.to_owned()])
            .await
        {
            tracing::warn!(%error, user_id, conversation_id, "clearing a deleted conversation from the cache failed");
            return Err(HistoryError::CacheNotCleared);
        }
        if found {
            Ok(())
        } else {
            Err(HistoryError::ConversationNotFound)
        }
    }

    pub(crate) async fn messages_page(
        &self,
        request: &ListConversationMessagesRequest,
    ) -> Result<ListConversationMessagesResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let conversation_id = parse_id(&request.conversation_id)?;
        let limit = page_size(request.limit, DEFAULT_MESSAGES, MAX_MESSAGES);
        let after = match request.cursor.as_str() {
            "" => 0,
            cursor => parse_message_cursor(cursor)?,
        };
        let user_id = request.user_id.as_str();
        let read: Result<Vec<crate::store::MessageRow>, HistoryError> = self
            .with_mysql("select", 1, async |connection| {
                find(connection, user_id, conversation_id).await?;
                Ok(connection
                    .exec(
                        "SELECT id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
                         FROM chat_history
                         WHERE user_id = ? AND conversation_id = ? AND id > ?
                         ORDER BY id LIMIT ?",
                        (user_id, conversation_id, after, limit + 1),
                    )
                    .await?)
            })
            .await;
        let rows = match read {
            // MySQL is away: the first page is the newest messages the cache and the
            // outbox hold, in one page, rather than nothing.
            Err(error) if error.is_outage() && after == 0 => {
                return self
                    .recent_while_away(user_id, conversation_id, limit)
                    .await
                    .map_err(|_| error);
            }
            read => read?,
        };
        let more = rows.len() > limit as usize;
        let messages: Vec<StoredMessage> = rows
            .into_iter()
            .take(limit as usize)
            .map(
                |(id, role, text, created_at_unix_ms, incomplete)| StoredMessage {
                    id,
                    role: role_from_name(&role).into(),
                    text,
                    created_at_unix_ms,
                    incomplete,
                },
            )
            .collect();
        let next_cursor = match messages.last() {
            Some(last) if more => last.id.to_string(),
            _ => String::new(),
        };
        Ok(ListConversationMessagesResponse {
            messages,
            next_cursor,
        })
    }

    async fn recent_while_away(
        &self,
        user_id: &str,
        conversation_id: &str,
        limit: u32,
    ) -> Result<ListConversationMessagesResponse, HistoryError> {
        let scope = crate::cache::Scope::Conversation {
            user_id,
            conversation_id,
        };
        let (newest, _) = self.newest(scope, limit.min(self.cache().size())).await?;
        let messages = newest
            .into_iter()
            .rev()
            .map(|message| StoredMessage {
                id: message.id,
                role: role_from_name(&message.role).into(),
                text: message.text,
                created_at_unix_ms: message.created_at_unix_ms,
                incomplete: message.incomplete,
            })
            .collect();
        Ok(ListConversationMessagesResponse {
            messages,
            next_cursor: String::new(),
        })
    }

    /// Every conversation and message of the user, in one transaction, then every
    /// cached list of theirs. Quota counters stay: erasing them would reset the day's
    /// spending.
    pub(crate) async fn erase(
        &self,
        request: &EraseUserRequest,
    ) -> Result<EraseUserResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let user_id = request.user_id.as_str();
        let erased = self
            .with_mysql("delete", DELETE_PATIENCE, async |connection| {
                let mut transaction = connection.start_transaction(TxOpts::default()).await?;
                // Locks the user's conversations first: a save into one of them waits,
                // then finds it gone.
                let _: Vec<String> = transaction
                    .exec(
                        "SELECT id FROM conversations WHERE user_id = ? FOR UPDATE",
                        (user_id,),
                    )
                    .await?;
                transaction
                    .exec_drop("DELETE FROM chat_history WHERE user_id = ?", (user_id,))
                    .await?;
                let messages = transaction.affected_rows() as i64;
                transaction
                    .exec_drop("DELETE FROM conversations WHERE user_id = ?", (user_id,))
                    .await?;
                let conversations = transaction.affected_rows() as i64;
                transaction.commit().await?;
                Ok(EraseUserResponse {
                    conversations,
                    messages,
                })
            })
            .await?;
        if let Err(error) = self.cache().forget_user(user_id).await {
            tracing::warn!(%error, user_id, "clearing an erased user from the cache failed");
            return Err(HistoryError::CacheNotCleared);
        }
        tracing::info!(
            user_id,
            conversations = erased.conversations,
            messages = erased.messages,
            "user's history erased"
        );
        Ok(erased)
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
