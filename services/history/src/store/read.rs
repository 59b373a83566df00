//! The read path: the newest messages of a user, or of one of their conversations,
//! from the cache, or from MySQL (then refilling the cache), with the saves still
//! waiting in the outbox merged in front.

use chat_common::user::validate_user_id;
use chat_proto::{LatestConversationRequest, ListRequest, ListResponse, Role, StoredMessage};
use mysql_async::prelude::Queryable;

use super::History;
use crate::cache::{CachedMessage, Latest, Scope};
use crate::conversations::parse_id;
use crate::error::HistoryError;
use crate::metrics::{self, CacheResult};

/// A `chat_history` row as read: id, role, text, created at (Unix ms), incomplete.
pub(crate) type MessageRow = (i64, String, String, i64, bool);

impl History {
    /// The newest messages of one user, or of one conversation of theirs, oldest first,
    /// wherever they were read from.
    pub async fn list_messages(&self, request: &ListRequest) -> Result<ListResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let limit = match request.limit {
            0 => self.inner.default_limit,
            limit => limit.min(self.inner.max_limit),
        };
        let user_id = request.user_id.as_str();
        if request.conversation_id.is_empty() && request.latest_conversation {
            return self.list_latest(user_id, limit).await;
        }
        let scope = match request.conversation_id.as_str() {
            "" => Scope::User(user_id),
            conversation_id => Scope::Conversation {
                user_id,
                conversation_id: parse_id(conversation_id)?,
            },
        };
        let (newest, from_cache) = self.newest(scope, limit).await?;
        Ok(ListResponse {
            messages: oldest_first(newest),
            from_cache,
            conversation_id: String::new(),
        })
    }

    /// The newest messages of the user's latest conversation, named in the answer. The
    /// cache's pointer says which it is (every save and new conversation writes it);
    /// without one, MySQL does. A pointer to a conversation gone meanwhile is dropped
    /// and MySQL asked.
    async fn list_latest(&self, user_id: &str, limit: u32) -> Result<ListResponse, HistoryError> {
        let pointed = match self.pointed(user_id, limit).await {
            Ok(Latest::Cached(conversation_id, newest)) => {
                metrics::cache_request(CacheResult::Hit);
                return Ok(ListResponse {
                    messages: oldest_first(newest),
                    from_cache: true,
                    conversation_id,
                });
            }
            Ok(Latest::To(conversation_id)) => Some(conversation_id),
            Ok(Latest::Nowhere) => None,
            Err(error) => {
                tracing::warn!(%error, "history cache unreadable; asking mysql for the latest conversation");
                None
            }
        };
        if let Some(conversation_id) = pointed {
            match self.list_of(user_id, conversation_id, limit).await {
                Err(HistoryError::ConversationNotFound) => {
                    if let Err(error) = self.cache().forget_latest(user_id).await {
                        tracing::warn!(%error, "dropping a stale latest conversation failed");
                    }
                }
                listed => return listed,
            }
        }
        let latest = self
            .latest(&LatestConversationRequest {
                user_id: user_id.to_owned(),
            })
            .await?;
        if let Err(error) = self.cache().fill_latest(user_id, &latest.id).await {
            tracing::warn!(%error, "recording the latest conversation failed");
        }
        self.list_of(user_id, latest.id, limit).await
    }

    /// What the cache's pointer says of the user's latest conversation: with its newest
    /// `limit` messages when they are cached (one round trip for both).
    async fn pointed(&self, user_id: &str, limit: u32) -> Result<Latest, crate::cache::CacheError> {
        let cache = self.cache();
        if limit > cache.size() {
            // More than a list holds: its messages come from MySQL anyway.
            return Ok(cache
                .latest(user_id)
                .await?
                .map_or(Latest::Nowhere, Latest::To));
        }
        cache.latest_recent(user_id, limit).await
    }

    /// The newest messages of a conversation known to be the user's latest, named in the
    /// answer. When they cannot be read (MySQL away, none cached) the chat still stays in
    /// it: answered without them.
    async fn list_of(
        &self,
        user_id: &str,
        conversation_id: String,
        limit: u32,
    ) -> Result<ListResponse, HistoryError> {
        let scope = Scope::Conversation {
            user_id,
            conversation_id: &conversation_id,
        };
        let (newest, from_cache) = match self.newest(scope, limit).await {
            Ok(read) => read,
            Err(error) if error.is_outage() => {
                tracing::warn!(%error, "the latest conversation's messages are unreadable; answering it without them");
                (Vec::new(), false)
            }
            Err(error) => return Err(error),
        };
        Ok(ListResponse {
            messages: oldest_first(newest),
            from_cache,
            conversation_id,
        })
    }

    /// The newest `limit` messages, newest first, and whether they came from the cache.
    /// A conversation's list is cached only once MySQL said it is the user's.
    pub(crate) async fn newest(
        &self,
        scope: Scope<'_>,
        limit: u32,
    ) -> Result<(Vec<CachedMessage>, bool), HistoryError> {
        let cache = &self.inner.cache;
        if limit > cache.size() {
            metrics::cache_request(CacheResult::Bypass);
            self.ensure_owned(scope).await?;
            return Ok((self.newest_from_mysql(scope, limit).await?, false));
        }
        match cache.recent(scope, limit).await {
            Ok(Some(messages)) => {
                metrics::cache_request(CacheResult::Hit);
                return Ok((messages, true));
            }
            Ok(None) => metrics::cache_request(CacheResult::Miss),
            Err(error) => {
                metrics::cache_request(CacheResult::Error);
                tracing::warn!(%error, "history cache read failed; reading mysql");
            }
        }
        let pending = self.pending_messages(scope).await;
        let from_mysql = async {
            // Before the version key is made: an id that is not the user's leaves nothing.
            self.ensure_owned(scope).await?;
            let version = cache.version(scope).await;
            let newest = self.newest_from_mysql(scope, cache.size()).await?;
            Ok::<_, HistoryError>((version, newest))
        };
        let (version, newest) = match from_mysql.await {
            Ok(read) => read,
            // MySQL is away: what waits in the outbox is all there is to show.
            Err(error) if error.is_outage() && !pending.is_empty() => {
                return Ok((pending.into_iter().take(limit as usize).collect(), false));
            }
            Err(error) => return Err(error),
        };
        if !pending.is_empty() {
            // Not cached: the drainer drops the lists when it writes these.
            let merged = pending.into_iter().chain(newest);
            return Ok((merged.take(limit as usize).collect(), false));
        }
        if let Ok(version) = version
            && let Err(error) = cache.refill(scope, &version, &newest).await
        {
            tracing::warn!(%error, "history cache refill failed");
        }
        Ok((newest.into_iter().take(limit as usize).collect(), false))
    }

    /// The scope's messages waiting in the outbox, newest first (none when Redis
    /// cannot say).
    async fn pending_messages(&self, scope: Scope<'_>) -> Vec<CachedMessage> {
        let user_id = match scope {
            Scope::User(user_id) | Scope::Conversation { user_id, .. } => user_id,
        };
        match self.inner.outbox.has_pending(user_id).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Vec::new(),
        }
        let entries = match self
            .inner
            .outbox
            .oldest(user_id, crate::outbox::READ_BACK)
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "outbox unreadable; reads miss its saves");
                return Vec::new();
            }
        };
        let mut messages: Vec<CachedMessage> = entries
            .iter()
            .filter(|(_, entry)| entry.in_scope(scope))
            .flat_map(|(_, entry)| entry.provisional())
            .collect();
        messages.reverse();
        messages
    }

    /// NOT_FOUND unless a conversation scope is one of the user's.
    async fn ensure_owned(&self, scope: Scope<'_>) -> Result<(), HistoryError> {
        match scope {
            Scope::User(_) => Ok(()),
            Scope::Conversation {
                user_id,
                conversation_id,
            } => self.owns(user_id, conversation_id).await,
        }
    }

    async fn newest_from_mysql(
        &self,
        scope: Scope<'_>,
        limit: u32,
    ) -> Result<Vec<CachedMessage>, HistoryError> {
        let mut connection = self.mysql().await?;
        const COLUMNS: &str = "SELECT id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete FROM chat_history";
        let (sql, params): (String, Vec<mysql_async::Value>) = match scope {
            Scope::User(user_id) => (
                format!("{COLUMNS} WHERE user_id = ? ORDER BY id DESC LIMIT ?"),
                vec![user_id.into(), limit.into()],
            ),
            Scope::Conversation {
                user_id,
                conversation_id,
            } => (
                format!(
                    "{COLUMNS} WHERE user_id = ? AND conversation_id = ? ORDER BY id DESC LIMIT ?"
                ),
                vec![user_id.into(), conversation_id.into(), limit.into()],
            ),
        };
        let query = connection.exec(sql, params);
        let read: Result<Vec<MessageRow>, HistoryError> = tokio::time::timeout(
            self.inner.timeout,
            chat_common::observe::db(metrics::MYSQL, "select", query),
        )
        .await
        .map_err(|_| HistoryError::ReadTimedOut)
        .and_then(|read| read.map_err(HistoryError::Mysql));
        match &read {
            Ok(_) => self.inner.breaker.succeeded(),
            Err(_) => self.inner.breaker.failed(),
        }
        Ok(read?.into_iter().map(cached_message).collect())
    }
}

/// A row as the cache holds it.
pub(crate) fn cached_message(
    (id, role, text, created_at_unix_ms, incomplete): MessageRow,
) -> CachedMessage {
    CachedMessage {
        id,
        role,
        text,
        created_at_unix_ms,
        incomplete,
    }
}

/// Messages read newest first, as a caller sees them: oldest first.
pub(crate) fn oldest_first(newest: Vec<CachedMessage>) -> Vec<StoredMessage> {
    newest.into_iter().rev().map(stored_message).collect()
}

pub(crate) fn stored_message(message: CachedMessage) -> StoredMessage {
    StoredMessage {
        id: message.id,
        role: role_from_name(&message.role).into(),
        text: message.text,
        created_at_unix_ms: message.created_at_unix_ms,
        incomplete: message.incomplete,
    }
}

fn role_from_name(name: &str) -> Role {
    match name {
        "assistant" => Role::Assistant,
        _ => Role::User,
    }
}
