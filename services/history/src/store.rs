use std::sync::Arc;
use std::time::Duration;

use chat_common::user::validate_user_id;
use chat_proto::history_service_server::HistoryService;
use chat_proto::{ListRequest, ListResponse, Role, SaveRequest, SaveResponse, StoredMessage};
use metrics::counter;
use mysql_async::prelude::Queryable;
use mysql_async::{Pool, PoolConstraints, PoolOpts};
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use crate::Settings;
use crate::cache::{Cache, CachedMessage};
use crate::writer::Writer;

/// Most messages one `Save` may carry.
const MAX_SAVE: usize = 16;

/// The gRPC service; cheap to clone.
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
        let opts = crate::mysql_opts(settings.mysql_dsn.expose_secret())?;
        let constraints = PoolConstraints::new(1, 32)
            .ok_or_else(|| anyhow::anyhow!("invalid MySQL pool size"))?;
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(PoolOpts::default().with_constraints(constraints));
        let mysql = Pool::new(opts);
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

    pub async fn close(&self) {
        if let Err(error) = self.inner.mysql.clone().disconnect().await {
            tracing::warn!(%error, "closing the mysql pool failed");
        }
    }

    async fn mysql(&self) -> Result<mysql_async::Conn, Status> {
        match tokio::time::timeout(self.inner.timeout, self.inner.mysql.get_conn()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(store_error(error)),
            Err(_) => Err(Status::unavailable(
                "history store: no MySQL connection in time",
            )),
        }
    }

    async fn newest_from_mysql(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<CachedMessage>, Status> {
        let mut connection = self.mysql().await?;
        let rows: Vec<(i64, String, String, i64, bool)> = tokio::time::timeout(
            self.inner.timeout,
            chat_common::observe::db(
                "mysql",
                "select",
                connection.exec(
                    "SELECT id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
                     FROM chat_history WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                    (user_id, limit),
                ),
            ),
        )
        .await
        .map_err(|_| Status::unavailable("history store: MySQL read timed out"))?
        .map_err(store_error)?;
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

    /// The newest `limit` messages, newest first, and whether they came from the cache.
    async fn newest(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<(Vec<CachedMessage>, bool), Status> {
        let cache = &self.inner.cache;
        if limit > cache.size() {
            counter!("history_cache_requests_total", "result" => "bypass").increment(1);
            return Ok((self.newest_from_mysql(user_id, limit).await?, false));
        }
        match cache.recent(user_id, limit).await {
            Ok(Some(messages)) => {
                counter!("history_cache_requests_total", "result" => "hit").increment(1);
                return Ok((messages, true));
            }
            Ok(None) => {
                counter!("history_cache_requests_total", "result" => "miss").increment(1);
            }
            Err(error) => {
                counter!("history_cache_requests_total", "result" => "error").increment(1);
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
}

#[tonic::async_trait]
impl HistoryService for History {
    async fn save(&self, request: Request<SaveRequest>) -> Result<Response<SaveResponse>, Status> {
        let request = request.into_inner();
        validate_user_id(&request.user_id)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        if request.messages.is_empty() || request.messages.len() > MAX_SAVE {
            return Err(Status::invalid_argument(format!(
                "a save carries 1 to {MAX_SAVE} messages"
            )));
        }
        let messages = request
            .messages
            .iter()
            .map(|message| match message.role() {
                role @ (Role::User | Role::Assistant) => {
                    Ok((role, message.text.clone(), message.incomplete))
                }
                _ => Err(Status::invalid_argument(
                    "only user and assistant messages are kept",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let saved = chat_common::observe::db(
            "mysql",
            "insert",
            self.inner.writer.save(&request.user_id, messages),
        )
        .await?;
        if let Err(error) = self.inner.cache.append(&request.user_id, &saved).await {
            // MySQL has the messages; the cache may miss them until it expires or refills.
            tracing::warn!(%error, user_id = %request.user_id, "history cache append failed");
        }
        Ok(Response::new(SaveResponse {
            ids: saved.iter().map(|message| message.id).collect(),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let request = request.into_inner();
        validate_user_id(&request.user_id)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
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
        Ok(Response::new(ListResponse {
            messages,
            from_cache,
        }))
    }
}

fn role_from_name(name: &str) -> Role {
    match name {
        "assistant" => Role::Assistant,
        _ => Role::User,
    }
}

fn store_error(error: mysql_async::Error) -> Status {
    Status::unavailable(format!("history store failed: {error}"))
}
