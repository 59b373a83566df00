//! The Redis side: each user's most recent messages, newest first, as JSON.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_redis::Pool;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::metrics;

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/append.lua")));
static REFILL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/refill.lua")));

/// One message as cached; the same fields MySQL holds, so both answers agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedMessage {
    pub id: i64,
    pub role: String,
    pub text: String,
    pub created_at_unix_ms: i64,
    /// A reply cut short; absent in entries cached before the field existed.
    #[serde(default)]
    pub incomplete: bool,
}

/// Why the cache could not answer. Never shown to a caller: the store logs it and
/// falls back to MySQL, the source of truth.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis unavailable: {0}")]
    Unavailable(deadpool_redis::PoolError),
    #[error("redis failed: {0}")]
    Failed(redis::RedisError),
    #[error("redis timed out")]
    TimedOut,
    /// In practice only when reading back an entry this code did not write.
    #[error("cache entry is not the expected json: {0}")]
    Json(serde_json::Error),
}

pub struct Cache {
    pool: Pool,
    prefix: String,
    size: u32,
    ttl_secs: u64,
    timeout: Duration,
}

impl Cache {
    pub fn new(pool: Pool, prefix: String, size: u32, ttl_secs: u64, timeout: Duration) -> Self {
        Self {
            pool,
            prefix,
            size,
            ttl_secs,
            timeout,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    fn keys(&self, user_id: &str) -> (String, String) {
        let list = format!("{}history:{user_id}", self.prefix);
        let version = format!("{list}:version");
        (list, version)
    }

    async fn run<T>(
        &self,
        name: &'static str,
        operation: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let work = async {
            let mut connection = self.pool.get().await.map_err(CacheError::Unavailable)?;
            operation(&mut connection).await.map_err(CacheError::Failed)
        };
        let timed = async {
            tokio::time::timeout(self.timeout, work)
                .await
                .map_err(|_| CacheError::TimedOut)?
        };
        chat_common::observe::db(metrics::REDIS, name, timed).await
    }

    /// The newest `limit` messages, newest first, or `None` on a miss.
    pub async fn recent(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Option<Vec<CachedMessage>>, CacheError> {
        let (list, _) = self.keys(user_id);
        let raw: Vec<String> = self
            .run("lrange", async |connection| {
                redis::cmd("LRANGE")
                    .arg(&list)
                    .arg(0)
                    .arg(i64::from(limit) - 1)
                    .query_async(connection)
                    .await
            })
            .await?;
        if raw.is_empty() {
            return Ok(None);
        }
        let messages = raw
            .iter()
            .map(|item| serde_json::from_str(item))
            .collect::<Result<Vec<CachedMessage>, _>>()
            .map_err(CacheError::Json)?;
        Ok(Some(messages))
    }

    /// The version to hand to [`Cache::refill`] after reading MySQL.
    pub async fn version(&self, user_id: &str) -> Result<String, CacheError> {
        let (_, version) = self.keys(user_id);
        let current: Option<String> = self
            .run("get", async |connection| {
                redis::cmd("GET")
                    .arg(&version)
                    .query_async(connection)
                    .await
            })
            .await?;
        Ok(current.unwrap_or_else(|| "0".to_owned()))
    }

    /// Caches `newest_first` unless a save happened since `version` was read.
    pub async fn refill(
        &self,
        user_id: &str,
        version: &str,
        newest_first: &[CachedMessage],
    ) -> Result<bool, CacheError> {
        let (list, version_key) = self.keys(user_id);
        let items = newest_first
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CacheError::Json)?;
        let mut invocation = REFILL.key(list);
        invocation
            .key(version_key)
            .arg(version)
            .arg(self.ttl_secs)
            .arg(items);
        let stored: i64 = self
            .run("refill", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Records saved messages (oldest first) after their MySQL commit.
    pub async fn append(
        &self,
        user_id: &str,
        oldest_first: &[CachedMessage],
    ) -> Result<(), CacheError> {
        let (list, version_key) = self.keys(user_id);
        let items = oldest_first
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CacheError::Json)?;
        let mut invocation = APPEND.key(list);
        invocation
            .key(version_key)
            .arg(self.ttl_secs)
            .arg(self.size)
            .arg(items);
        let _: i64 = self
            .run("append", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok(())
    }
}
