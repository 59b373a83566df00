//! The history store: MySQL, the group-commit writer, the cache, the outbox and the
//! breaker behind one cheap handle, connected at start and closed at shutdown. The
//! request path is in its two halves: saves (`store/save.rs`) and reads
//! (`store/read.rs`). Conversations themselves are in `conversations/`.
//!
//! When MySQL is away (down, hung, or slower than `HISTORY_SAVE_TIMEOUT_MS`), a save
//! goes to the outbox instead (`outbox.rs`) and is answered `pending`; so does every
//! later save of that user until their outbox is drained, so their messages reach
//! MySQL in order. After a MySQL failure, MySQL is left alone for a second
//! ([`Breaker`]): saves go straight to the outbox and reads that need MySQL fail at
//! once, so chats stay fast through an outage.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::Pool;
use secrecy::ExposeSecret;

use crate::Settings;
use crate::breaker::Breaker;
use crate::cache::Cache;
use crate::error::HistoryError;
use crate::outbox::Outbox;
use crate::writer::Writer;

mod read;
mod save;

pub(crate) use read::{MessageRow, cached_message, oldest_first, stored_message};
pub(crate) use save::MAX_SAVE;

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

fn mysql_pool(settings: &Settings) -> anyhow::Result<Pool> {
    crate::mysql_pool(
        settings.mysql_dsn.expose_secret(),
        32,
        crate::Statements::Keep,
    )
}
