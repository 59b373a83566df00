//! The request path: a save finds its conversation, goes to MySQL through the
//! group-commit writer, then to the cache; a list reads the cache, or MySQL and refills
//! the cache. Conversations themselves are in `conversations.rs`.

use std::sync::Arc;
use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::{
    ListRequest, ListResponse, NewMessage, Role, SaveRequest, SaveResponse, StoredMessage,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, PoolConstraints, PoolOpts};
use secrecy::ExposeSecret;

use crate::Settings;
use crate::cache::{Cache, CachedMessage, Scope};
use crate::conversations::{parse_id, title_from_message};
use crate::error::HistoryError;
use crate::metrics::{self, CacheResult};
use crate::writer::{Row, Save, Writer};

/// Most messages one `Save` may carry.
pub(crate) const MAX_SAVE: usize = 16;

/// The history store and gRPC service; cheap to clone.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    mysql: Pool,
    writer: Writer,
    cache: Cache,
    default_limit: u32,
    max_limit: u32,
    timeout: Duration,
}

impl History {
    /// Connects to MySQL and Redis and migrates the schema.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.store_timeout_ms);
        let mysql = mysql_pool(settings)?;
        let migrated = tokio::time::timeout(Duration::from_secs(90), crate::migrate(&mysql))
            .await
            .map_err(|_| anyhow::anyhow!("MySQL did not answer within 90 s"))?
            .map_err(|error| anyhow::anyhow!("cannot migrate the MySQL schema: {error}"))?;
        tracing::info!(migrated, "mysql schema up to date");
        let redis = chat_common::redis::pool(&settings.redis_addr, 32, timeout)?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer: Writer::start(
                    mysql.clone(),
                    timeout,
                    settings.history_writers,
                    settings.history_batch_rows,
                ),
                mysql,
                cache: Cache::new(
                    redis,
                    settings.redis_key_prefix.clone(),
                    settings.history_cache_size,
                    settings.history_cache_ttl_secs,
                    timeout,
                ),
                default_limit: settings.history_default_limit,
                max_limit: settings.history_max_limit,
                timeout,
            }),
        })
    }

    /// The MySQL pool, for the accounts served beside the history.
    pub(crate) fn mysql_pool(&self) -> Pool {
        self.inner.mysql.clone()
    }

    pub(crate) fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    pub async fn close(&self) {
        if let Err(error) = self.inner.mysql.clone().disconnect().await {
            tracing::warn!(%error, "closing the mysql pool failed");
        }
    }

    /// Commits the messages to MySQL in their conversation, then appends them to the
    /// cached lists if any.
    pub async fn save_messages(&self, request: &SaveRequest) -> Result<SaveResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let rows = rows_to_save(&request.messages)?;
        let conversation_id = self.conversation_for_save(request).await?;
        let title = rows
            .iter()
            .find(|(role, _, _)| *role == Role::User)
            .map(|(_, text, _)| title_from_message(text))
            .unwrap_or_default();
        let save = Save {
            user_id: request.user_id.clone(),
            conversation_id: conversation_id.clone(),
            title,
            rows,
        };
        let saved =
            chat_common::observe::db(metrics::MYSQL, "insert", self.inner.writer.save(save))
                .await?;
        let cache = &self.inner.cache;
        if let Err(error) = cache
            .append(&request.user_id, &conversation_id, &saved)
            .await
        {
            // MySQL has the messages; the cache may miss them until it expires or refills.
            tracing::warn!(%error, user_id = %request.user_id, "history cache append failed");
        }
        Ok(SaveResponse {
            ids: saved.iter().map(|message| message.id).collect(),
            conversation_id,
        })
    }

    /// The newest messages of one user, or of one conversation of theirs, oldest first,
    /// wherever they were read from.
    pub async fn list_messages(&self, request: &ListRequest) -> Result<ListResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let limit = match request.limit {
            0 => self.inner.default_limit,
            limit => limit.min(self.inner.max_limit),
        };
        let scope = match request.conversation_id.as_str() {
            "" => Scope::User(&request.user_id),
            conversation_id => Scope::Conversation {
                user_id: &request.user_id,
                conversation_id: parse_id(conversation_id)?,
            },
        };
        let (newest, from_cache) = self.newest(scope, limit).await?;
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
        Ok(ListResponse {
            messages,
            from_cache,
        })
    }

    /// The newest `limit` messages, newest first, and whether they came from the cache.
    /// A conversation's list is cached only once MySQL said it is the user's.
    async fn newest(
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
        // Before the version key is made: an id that is not the user's leaves nothing.
        self.ensure_owned(scope).await?;
        let version = cache.version(scope).await;
        let newest = self.newest_from_mysql(scope, cache.size()).await?;
        if let Ok(version) = version
            && let Err(error) = cache.refill(scope, &version, &newest).await
        {
            tracing::warn!(%error, "history cache refill failed");
        }
        Ok((newest.into_iter().take(limit as usize).collect(), false))
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
        let rows: Vec<(i64, String, String, i64, bool)> = tokio::time::timeout(
            self.inner.timeout,
            chat_common::observe::db(metrics::MYSQL, "select", query),
        )
        .await
        .map_err(|_| HistoryError::ReadTimedOut)?
        .map_err(HistoryError::Mysql)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, role, text, created_at_unix_ms, incomplete)| CachedMessage {
                    id,
                    role,
                    text,
                    created_at_unix_ms,
                    incomplete,
                },
            )
            .collect())
    }

    pub(crate) async fn mysql(&self) -> Result<mysql_async::Conn, HistoryError> {
        match tokio::time::timeout(self.inner.timeout, self.inner.mysql.get_conn()).await {
            Ok(outcome) => outcome.map_err(HistoryError::Mysql),
            Err(_) => Err(HistoryError::NoConnectionInTime),
        }
    }
}

fn mysql_pool(settings: &Settings) -> anyhow::Result<Pool> {
    let opts = crate::mysql_opts(settings.mysql_dsn.expose_secret())?;
    let constraints =
        PoolConstraints::new(1, 32).ok_or_else(|| anyhow::anyhow!("invalid MySQL pool size"))?;
    let opts = mysql_async::OptsBuilder::from_opts(opts)
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    Ok(Pool::new(opts))
}

/// The rows of a save, refused whole if it is empty, too large, or holds a message of
/// a role the history does not keep.
fn rows_to_save(messages: &[NewMessage]) -> Result<Vec<Row>, HistoryError> {
    if messages.is_empty() || messages.len() > MAX_SAVE {
        return Err(HistoryError::BadMessageCount);
    }
    messages
        .iter()
        .map(|message| match message.role() {
            role @ (Role::User | Role::Assistant) => {
                Ok((role, message.text.clone(), message.incomplete))
            }
            _ => Err(HistoryError::BadRole),
        })
        .collect()
}

pub(crate) fn role_from_name(name: &str) -> Role {
    match name {
        "assistant" => Role::Assistant,
        _ => Role::User,
    }
}
