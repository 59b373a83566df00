//! The Redis side: the most recent messages, newest first, as JSON, in two lists per
//! user: across all their conversations (`history:{user}`, for `GET /history`) and per
//! conversation (`history:{user}#{conversation}`, a chat's context). `#` cannot occur
//! in a user id, so the two never collide. Each list has a version key beside it
//! (`...:version`): a save bumps it, a delete removes it, and a refill writes only if it
//! is unchanged since the refill's MySQL read began.
//!
//! Beside them, in the same slot: `history:{user}:latest` (the conversation the user
//! last saved to) and `history:{user}:outbox` (saves waiting for MySQL, `outbox.rs`).
//!
//! The user id in the keys is a hash tag (`history:{u1}`, `history:{u1}#<conversation>`,
//! their `:version`): every key a script touches is in the user's one slot, so the
//! scripts run on a Redis Cluster. All are declared but one: `latest.lua` reads the list
//! its pointer names, which it cannot know beforehand (same slot, by the tag).

use std::sync::LazyLock;
use std::time::Duration;

use chat_common::redis::Pool;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::metrics;

mod latest;

pub use latest::Latest;

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/append.lua")));
static REFILL: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/refill.lua")));
static VERSION: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/version.lua")));
static LATEST: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/latest.lua")));

/// A cached list's items, newest first; `None` for an empty list (a miss: a list is
/// never cached empty).
fn parsed(raw: &[String]) -> Result<Option<Vec<CachedMessage>>, CacheError> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.iter()
        .map(|item| serde_json::from_str(item))
        .collect::<Result<Vec<CachedMessage>, _>>()
        .map(Some)
        .map_err(CacheError::Json)
}

/// Which list: a user's recent messages across conversations, or one conversation's.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    User(&'a str),
    Conversation {
        user_id: &'a str,
        conversation_id: &'a str,
    },
}

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
    Unavailable(chat_common::redis::PoolError),
    #[error("redis failed: {0}")]
    Failed(redis::RedisError),
    #[error("redis timed out")]
    TimedOut,
    /// In practice only when reading back an entry this code did not write.
    #[error("cache entry is not the expected json: {0}")]
    Json(serde_json::Error),
}

/// The Redis pool of the cache and the outbox: every call on it is timed out, traced
/// and counted alike.
pub struct Redis {
    pool: Pool,
    timeout: Duration,
}

impl Redis {
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    pub async fn run<T>(
        &self,
        name: &'static str,
        operation: impl AsyncFnOnce(&mut chat_common::redis::Connection) -> redis::RedisResult<T>,
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
}

pub struct Cache {
    redis: Redis,
    prefix: String,
    size: u32,
    ttl_secs: u64,
}

impl Cache {
    pub fn new(pool: Pool, prefix: String, size: u32, ttl_secs: u64, timeout: Duration) -> Self {
        Self {
            redis: Redis::new(pool, timeout),
            prefix,
            size,
            ttl_secs,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    fn keys(&self, scope: Scope<'_>) -> (String, String) {
        let list = match scope {
            Scope::User(user_id) => format!("{}history:{{{user_id}}}", self.prefix),
            Scope::Conversation {
                user_id,
                conversation_id,
            } => format!("{}history:{{{user_id}}}#{conversation_id}", self.prefix),
        };
        let version = format!("{list}:version");
        (list, version)
    }

    /// The newest `limit` messages, newest first, or `None` on a miss.
    pub async fn recent(
        &self,
        scope: Scope<'_>,
        limit: u32,
    ) -> Result<Option<Vec<CachedMessage>>, CacheError> {
        let (list, _) = self.keys(scope);
        let raw: Vec<String> = self
            .redis
            .run("lrange", async |connection| {
                redis::cmd("LRANGE")
                    .arg(&list)
                    .arg(0)
                    .arg(i64::from(limit) - 1)
                    .query_async(connection)
                    .await
            })
            .await?;
        parsed(&raw)
    }

    /// The version to hand to [`Cache::refill`] after reading MySQL.
    pub async fn version(&self, scope: Scope<'_>) -> Result<String, CacheError> {
        let (_, version) = self.keys(scope);
        // Below 2^52: INCR keeps working on it, and a save's INCR of a missing key ("1")
        // cannot meet it.
        let fresh = (uuid::Uuid::new_v4().as_u64_pair().0 >> 12) | (1 << 32);
        let mut invocation = VERSION.key(version);
        invocation.arg(fresh).arg(self.ttl_secs);
        self.redis
            .run("version", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await
    }

    /// Caches `newest_first` unless a save happened since `version` was read.
    pub async fn refill(
        &self,
        scope: Scope<'_>,
        version: &str,
        newest_first: &[CachedMessage],
    ) -> Result<bool, CacheError> {
        let (list, version_key) = self.keys(scope);
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
            .redis
            .run("refill", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Records saved messages (oldest first) after their MySQL commit, in the user's
    /// list and in their conversation's (none when `conversation_id` is empty), and
    /// makes the conversation the user's latest.
    pub async fn append(
        &self,
        user_id: &str,
        conversation_id: &str,
        oldest_first: &[CachedMessage],
    ) -> Result<(), CacheError> {
        self.append_with(user_id, conversation_id, oldest_first, ("", ""))
            .await
    }

    /// As [`Cache::append`], adding `entry` (JSON) to the user's outbox stream in the
    /// same step: the messages show in reads from the moment they are durable. A save
    /// already queued under `request_id` is not queued again.
    pub async fn append_pending(
        &self,
        user_id: &str,
        conversation_id: &str,
        provisional: &[CachedMessage],
        entry: &str,
        request_id: &str,
    ) -> Result<(), CacheError> {
        self.append_with(user_id, conversation_id, provisional, (entry, request_id))
            .await
    }

    async fn append_with(
        &self,
        user_id: &str,
        conversation_id: &str,
        oldest_first: &[CachedMessage],
        (entry, request_id): (&str, &str),
    ) -> Result<(), CacheError> {
        let items = oldest_first
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(CacheError::Json)?;
        let (user_list, user_version) = self.keys(Scope::User(user_id));
        // The outbox's keys, the same as `Outbox::stream_key` and `Outbox::ids_key`.
        let mut invocation = APPEND.key(format!("{user_list}:outbox"));
        invocation
            .key(format!("{user_list}:outbox:ids"))
            .key(self.latest_key(user_id))
            .key(user_list)
            .key(user_version);
        if !conversation_id.is_empty() {
            let (list, version) = self.keys(Scope::Conversation {
                user_id,
                conversation_id,
            });
            invocation.key(list).key(version);
        }
        invocation
            .arg(entry)
            .arg(request_id)
            .arg(self.ttl_secs)
            .arg(self.size)
            .arg(conversation_id)
            .arg(items);
        let _: i64 = self
            .redis
            .run("append", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok(())
    }

    /// Drops the cached lists of these conversations, and the user's list (it holds
    /// their messages too), versions included, so no refill that read MySQL before the
    /// delete can write.
    pub async fn forget(
        &self,
        user_id: &str,
        conversation_ids: &[String],
    ) -> Result<(), CacheError> {
        let mut keys = Vec::with_capacity(3 + 2 * conversation_ids.len());
        let (list, version) = self.keys(Scope::User(user_id));
        keys.extend([list, version, self.latest_key(user_id)]);
        for conversation_id in conversation_ids {
            let (list, version) = self.keys(Scope::Conversation {
                user_id,
                conversation_id,
            });
            keys.extend([list, version]);
        }
        self.delete(&keys).await
    }

    /// Drops every cached list of the user, whether MySQL still knows its conversation
    /// or not (a retried erase whose first attempt could not reach Redis).
    pub async fn forget_user(&self, user_id: &str) -> Result<(), CacheError> {
        let (list, _) = self.keys(Scope::User(user_id));
        let pattern = format!("{}#*", glob_escape(&list));
        let mut cursor = 0_u64;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .run("scan", async |connection| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(connection)
                        .await
                })
                .await?;
            found.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // The outbox too: an erased user's pending saves must not come back.
        let (list, version) = self.keys(Scope::User(user_id));
        found.extend([
            format!("{list}:outbox"),
            format!("{list}:outbox:ids"),
            list,
            version,
            self.latest_key(user_id),
        ]);
        self.delete(&found).await
    }

    /// Deletes `keys`, a bounded number per command.
    async fn delete(&self, keys: &[String]) -> Result<(), CacheError> {
        for chunk in keys.chunks(512) {
            let _: i64 = self
                .redis
                .run("del", async |connection| {
                    redis::cmd("DEL").arg(chunk).query_async(connection).await
                })
                .await?;
        }
        Ok(())
    }
}

/// `text` matched literally by Redis's glob patterns (the key prefix is configurable).
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
