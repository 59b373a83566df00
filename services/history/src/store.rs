//! The request path: a save goes to MySQL through the group-commit writer, then to the
//! cache; a list reads the cache, or MySQL and refills the cache.

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
use crate::cache::{Cache, CachedMessage};
use crate::error::HistoryError;
use crate::metrics::{self, CacheResult};
use crate::writer::{Row, Writer};

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

    pub async fn close(&self) {
        if let Err(error) = self.inner.mysql.clone().disconnect().await {
            tracing::warn!(%error, "closing the mysql pool failed");
        }
    }

    /// Commits the messages to MySQL, then appends them to the cached list if any.
    pub async fn save_messages(&self, request: &SaveRequest) -> Result<SaveResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let rows = rows_to_save(&request.messages)?;
        let saved = chat_common::observe::db(
            metrics::MYSQL,
            "insert",
            self.inner.writer.save(&request.user_id, rows),
        )
        .await?;
        if let Err(error) = self.inner.cache.append(&request.user_id, &saved).await {
            // MySQL has the messages; the cache may miss them until it expires or refills.
            tracing::warn!(%error, user_id = %request.user_id, "history cache append failed");
        }
        Ok(SaveResponse {
            ids: saved.iter().map(|message| message.id).collect(),
        })
    }

    /// The newest messages of one user, oldest first, wherever they were read from.
    pub async fn list_messages(&self, request: &ListRequest) -> Result<ListResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        let limit = match request.limit {
            0 => self.inner.default_limit,
            limit => limit.min(self.inner.max_limit),
        };
        let (newest, from_cache) = self.newest(&request.user_id, limit).await?;
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
    async fn newest(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<(Vec<CachedMessage>, bool), HistoryError> {
        let cache = &self.inner.cache;
        if limit > cache.size() {
            metrics::cache_request(CacheResult::Bypass);
            return Ok((self.newest_from_mysql(user_id, limit).await?, false));
        }
        match cache.recent(user_id, limit).await {
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
        let version = cache.version(user_id).await;
        let newest = self.newest_from_mysql(user_id, cache.size()).await?;
        if let Ok(version) = version
            && let Err(error) = cache.refill(user_id, &version, &newest).await
        {
            tracing::warn!(%error, "history cache refill failed");
        }
        Ok((newest.into_iter().take(limit as usize).collect(), false))
    }

    async fn newest_from_mysql(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<CachedMessage>, HistoryError> {
        let mut connection = self.mysql().await?;
        let rows: Vec<(i64, String, String, i64, bool)> = tokio::time::timeout(
            self.inner.timeout,
            chat_common::observe::db(
                metrics::MYSQL,
                "select",
                connection.exec(
                    "SELECT id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
                     FROM chat_history WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                    (user_id, limit),
                ),
            ),
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

    async fn mysql(&self) -> Result<mysql_async::Conn, HistoryError> {
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

fn role_from_name(name: &str) -> Role {
    match name {
        "assistant" => Role::Assistant,
        _ => Role::User,
    }
}
