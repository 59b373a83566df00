//! The request path: a save finds its conversation, goes to MySQL through the
//! group-commit writer, then to the cache; a list reads the cache, or MySQL and refills
//! the cache. Conversations themselves are in `conversations.rs`.
//!
//! When MySQL is away (down, hung, or slower than `HISTORY_SAVE_TIMEOUT_MS`), a save
//! goes to the outbox instead (`outbox.rs`) and is answered `pending`; so does every
//! later save of that user until their outbox is drained, so their messages reach
//! MySQL in order. After a MySQL failure, MySQL is left alone for a second
//! ([`Breaker`]): saves go straight to the outbox and reads that need MySQL fail at
//! once, so chats stay fast through an outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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
use crate::outbox::{Entry, Outbox};
use crate::writer::{Row, Save, Writer, unix_now_ms};

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
    outbox: Outbox,
    breaker: Arc<Breaker>,
    /// Wakes the drainer when a save is queued.
    queued: tokio::sync::Notify,
    /// This process's claim on the drainers' lock.
    drainer: String,
    default_limit: u32,
    max_limit: u32,
    timeout: Duration,
    save_timeout: Duration,
}

/// How long MySQL is left alone after it failed.
const BREAK_MS: i64 = 1000;

/// A `chat_history` row as read: id, role, text, created at (Unix ms), incomplete.
pub(crate) type MessageRow = (i64, String, String, i64, bool);

/// Whether MySQL is worth trying: after a failure, not for [`BREAK_MS`]; then one call
/// tries again (and closes it, or opens it for another second).
#[derive(Default)]
pub(crate) struct Breaker {
    open_until_ms: AtomicI64,
}

impl Breaker {
    pub(crate) fn closed(&self) -> bool {
        let now = unix_now_ms();
        let until = self.open_until_ms.load(Ordering::Relaxed);
        // Past the pause, the first caller through re-opens it for the others while it
        // tries: one probe per second, not a stampede.
        until <= now
            && (until == 0
                || self
                    .open_until_ms
                    .compare_exchange(until, now + BREAK_MS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
    }

    /// Whether MySQL failed within the pause: a look that claims no probe, for callers
    /// that go on to [`History::mysql`], which claims it.
    pub(crate) fn open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) > unix_now_ms()
    }

    /// Records a failure that says something about MySQL: [`HistoryError::MysqlAway`]
    /// (the breaker's own answer) says nothing new, and must not prolong the pause
    /// while another caller's probe is out.
    pub(crate) fn failed_with(&self, error: &HistoryError) {
        if error.is_outage() && !matches!(error, HistoryError::MysqlAway) {
            self.failed();
        }
    }

    pub(crate) fn failed(&self) {
        let until = unix_now_ms() + BREAK_MS;
        if self.open_until_ms.swap(until, Ordering::Relaxed) == 0 {
            metrics::mysql_breaker(true);
            tracing::warn!("mysql failed: saves go to the outbox for now");
        }
    }

    pub(crate) fn succeeded(&self) {
        if self.open_until_ms.swap(0, Ordering::Relaxed) != 0 {
            metrics::mysql_breaker(false);
            tracing::info!("mysql answers again");
        }
    }
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
        let history = Self {
            inner: Arc::new(Inner {
                writer: Writer::start(
                    mysql.clone(),
                    timeout,
                    settings.history_writers,
                    settings.history_batch_rows,
                ),
                mysql,
                cache: Cache::new(
                    redis.clone(),
                    settings.redis_key_prefix.clone(),
                    settings.history_cache_size,
                    settings.history_cache_ttl_secs,
                    timeout,
                ),
                outbox: Outbox::new(redis, settings.redis_key_prefix.clone(), timeout),
                breaker: Arc::default(),
                queued: tokio::sync::Notify::new(),
                drainer: uuid::Uuid::new_v4().to_string(),
                default_limit: settings.history_default_limit,
                max_limit: settings.history_max_limit,
                timeout,
                save_timeout: Duration::from_millis(settings.history_save_timeout_ms),
            }),
        };
        tokio::spawn(crate::drain::run(
            history.clone(),
            history.inner.drainer.clone(),
        ));
        Ok(history)
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

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.inner.breaker
    }

    /// The breaker, for the accounts served on the same MySQL.
    pub(crate) fn shared_breaker(&self) -> Arc<Breaker> {
        self.inner.breaker.clone()
    }

    /// Resolves when a save was queued in the outbox since the last call.
    pub(crate) async fn queued(&self) {
        self.inner.queued.notified().await;
    }

    pub async fn close(&self) {
        // Another replica, or the next process, drains at once instead of waiting.
        if let Err(error) = self.inner.outbox.unlock(&self.inner.drainer).await {
            tracing::warn!(%error, "releasing the outbox lock failed");
        }
        if let Err(error) = self.inner.mysql.clone().disconnect().await {
            tracing::warn!(%error, "closing the mysql pool failed");
        }
    }

    /// Commits the messages to MySQL in their conversation, then appends them to the
    /// cached lists if any; or, when MySQL is away or the user's earlier saves still
    /// wait in the outbox, queues them there.
    pub async fn save_messages(&self, request: &SaveRequest) -> Result<SaveResponse, HistoryError> {
        validate_user_id(&request.user_id)?;
        validate_request_id(&request.request_id)?;
        let rows = rows_to_save(&request.messages)?;
        let title = rows
            .iter()
            .find(|(role, _, _)| *role == Role::User)
            .map(|(_, text, _)| title_from_message(text))
            .unwrap_or_default();
        let mut save = Save {
            user_id: request.user_id.clone(),
            conversation_id: String::new(),
            title,
            rows,
            request_id: request.request_id.clone(),
            created_at_ms: unix_now_ms(),
        };
        let behind = match self.inner.outbox.has_pending(&request.user_id).await {
            Ok(behind) => behind,
            Err(error) => {
                // Without Redis there is no outbox to be behind, nor to fall back on.
                tracing::warn!(%error, "outbox unreadable; saving to mysql directly");
                false
            }
        };
        if !behind && !self.inner.breaker.open() {
            match self.save_to_mysql(request, &mut save).await {
                Err(error) if error.is_outage() => {
                    self.inner.breaker.failed_with(&error);
                    tracing::warn!(%error, user_id = %request.user_id, "mysql cannot take the save; queueing it");
                }
                saved => return saved,
            }
        }
        self.save_to_outbox(request, save).await
    }

    async fn save_to_mysql(
        &self,
        request: &SaveRequest,
        save: &mut Save,
    ) -> Result<SaveResponse, HistoryError> {
        let work = async {
            save.conversation_id = self.conversation_for_save(request).await?;
            let saved = self.inner.writer.save(save.clone());
            chat_common::observe::db(metrics::MYSQL, "insert", saved).await
        };
        let committed = tokio::time::timeout(self.inner.save_timeout, work)
            .await
            .map_err(|_| HistoryError::WriteTimedOut)??;
        self.inner.breaker.succeeded();
        if committed.fresh
            && let Err(error) = self
                .inner
                .cache
                .append(&save.user_id, &save.conversation_id, &committed.messages)
                .await
        {
            // MySQL has the messages; lists without them must go, not be left stale.
            tracing::warn!(%error, user_id = %save.user_id, "history cache append failed; dropping the lists");
            self.forget_later(&save.user_id, &save.conversation_id);
        }
        Ok(SaveResponse {
            ids: committed
                .messages
                .iter()
                .map(|message| message.id)
                .collect(),
            conversation_id: save.conversation_id.clone(),
            pending: false,
        })
    }

    /// Queues the save in the outbox, with its messages in the cached lists under
    /// provisional ids. A save naming no conversation starts one, made when drained.
    async fn save_to_outbox(
        &self,
        request: &SaveRequest,
        mut save: Save,
    ) -> Result<SaveResponse, HistoryError> {
        let key = request.conversation_key.as_str();
        let mut create = false;
        if save.conversation_id.is_empty() {
            if !request.conversation_id.is_empty() {
                save.conversation_id = parse_id(&request.conversation_id)?.to_owned();
            } else if key.is_empty() {
                save.conversation_id = uuid::Uuid::new_v4().to_string();
                create = true;
            } else if key.chars().count() > crate::conversations::MAX_KEY_CHARS {
                return Err(HistoryError::BadConversationKey);
            }
        }
        let entry = Entry::new(&save, key, create);
        let json = serde_json::to_string(&entry).map_err(|_| HistoryError::OutboxUnavailable)?;
        let queued = self
            .inner
            .cache
            .append_pending(
                &save.user_id,
                &save.conversation_id,
                &entry.provisional(),
                &json,
                &save.request_id,
            )
            .await;
        if let Err(error) = queued {
            tracing::error!(%error, user_id = %save.user_id, "neither mysql nor the outbox took the save");
            return Err(HistoryError::OutboxUnavailable);
        }
        if let Err(error) = self.inner.outbox.list_user(&save.user_id).await {
            // The entry is safe; the drainer's sweep of the streams finds it.
            tracing::warn!(%error, user_id = %save.user_id, "listing the user for the drainer failed");
        }
        metrics::outbox_queued();
        self.inner.queued.notify_one();
        Ok(SaveResponse {
            ids: Vec::new(),
            conversation_id: save.conversation_id,
            pending: true,
        })
    }

    /// Drops the user's cached lists in the background, retrying while Redis fails,
    /// so lists that missed an append do not outlive the failure.
    fn forget_later(&self, user_id: &str, conversation_id: &str) {
        let (history, user_id) = (self.clone(), user_id.to_owned());
        let conversations = vec![conversation_id.to_owned()];
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            for _ in 0..12 {
                match history.cache().forget(&user_id, &conversations).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(%error, "dropping stale cached lists failed; retrying")
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            tracing::error!(%user_id, "cached lists may be stale until they expire");
        });
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
        let rows = read?;
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

    /// A pooled connection, unless MySQL just failed (then at once
    /// [`HistoryError::MysqlAway`]: see [`Breaker`]).
    pub(crate) async fn mysql(&self) -> Result<mysql_async::Conn, HistoryError> {
        if !self.inner.breaker.closed() {
            return Err(HistoryError::MysqlAway);
        }
        let outcome =
            match tokio::time::timeout(self.inner.timeout, self.inner.mysql.get_conn()).await {
                Ok(outcome) => outcome.map_err(HistoryError::Mysql),
                Err(_) => Err(HistoryError::NoConnectionInTime),
            };
        if outcome.is_err() {
            self.inner.breaker.failed();
        }
        outcome
    }
}

/// A request id is 1 to 64 characters of `[A-Za-z0-9._:-]` (or none at all).
fn validate_request_id(request_id: &str) -> Result<(), HistoryError> {
    let fits = request_id.len() <= 64
        && request_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(&byte));
    if fits {
        Ok(())
    } else {
        Err(HistoryError::BadRequestId)
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
