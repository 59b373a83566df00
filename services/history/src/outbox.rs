//! The outbox: saves MySQL could not take in time, kept durably in Redis until the
//! drainer (`drain.rs`) writes them. One Redis Stream per user,
//! `history:{user}:outbox`, so a user's saves drain in the order they were made and
//! every key of a script is in the user's one slot; `history:outbox:users` lists the
//! users with entries (touched by plain commands only, like the token service's
//! `reservations:due`).
//!
//! An entry is acknowledged as saved once Redis has it: as durable as Redis is
//! configured to be (compose runs it with `appendonly yes`). Its messages go into the
//! cached lists at the same time, under provisional negative ids, so reads show them
//! while MySQL is away; the drainer drops those lists once the entry is in MySQL, and
//! the next read refills them with the real ids.

use std::sync::LazyLock;
use std::time::Duration;

use chat_common::redis::Pool;
use chat_proto::Role;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::cache::{CacheError, CachedMessage, Redis, Scope};
use crate::writer::{Row, Save, role_name};

/// Lets go of the lock, if this process holds it.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// Takes the lock, or extends it when this process holds it.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then
           return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
         end
         return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])",
    )
});

/// Deletes a user's stream and its request ids if the stream is still empty.
static DELETE_EMPTY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('XLEN', KEYS[1]) == 0 then return redis.call('DEL', KEYS[1], KEYS[2]) end return 0",
    )
});

/// Entries a read looks back at: more than a cached list holds.
pub const READ_BACK: usize = 64;

/// How long the drainer's lock lasts without being taken again: the longest another
/// replica waits when a drainer dies holding it.
pub const LOCK_MS: u64 = 10_000;

/// One save waiting for MySQL, as the stream holds it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub request_id: String,
    pub user_id: String,
    /// The conversation, when known; empty when the save named its conversation by key.
    pub conversation_id: String,
    #[serde(default)]
    pub conversation_key: String,
    /// The conversation is new: made when MySQL was away, created when drained.
    #[serde(default)]
    pub create_conversation: bool,
    pub title: String,
    pub rows: Vec<EntryRow>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryRow {
    pub role: String,
    pub text: String,
    pub incomplete: bool,
}

impl Entry {
    pub fn new(save: &Save, conversation_key: &str, create_conversation: bool) -> Self {
        Self {
            request_id: save.request_id.clone(),
            user_id: save.user_id.clone(),
            conversation_id: save.conversation_id.clone(),
            conversation_key: conversation_key.to_owned(),
            create_conversation,
            title: save.title.clone(),
            rows: save
                .rows
                .iter()
                .map(|(role, text, incomplete)| EntryRow {
                    role: role_name(*role).to_owned(),
                    text: text.clone(),
                    incomplete: *incomplete,
                })
                .collect(),
            created_at_ms: save.created_at_ms,
        }
    }

    /// The save to write, into `conversation_id` (the entry's own, or its key's).
    pub fn save(&self, conversation_id: &str) -> Save {
        Save {
            user_id: self.user_id.clone(),
            conversation_id: conversation_id.to_owned(),
            title: self.title.clone(),
            rows: self
                .rows
                .iter()
                .map(|row| -> Row {
                    let role = match row.role.as_str() {
                        "assistant" => Role::Assistant,
                        _ => Role::User,
                    };
                    (role, row.text.clone(), row.incomplete)
                })
                .collect(),
            request_id: self.request_id.clone(),
            created_at_ms: self.created_at_ms,
        }
    }

    /// The messages as reads show them until drained: ids below zero, unique per
    /// entry and in order, so they sort and key like real ones without meeting one.
    pub fn provisional(&self) -> Vec<CachedMessage> {
        self.rows
            .iter()
            .enumerate()
            .map(|(place, row)| CachedMessage {
                id: -(self.created_at_ms * 16 + place as i64 + 1),
                role: row.role.clone(),
                text: row.text.clone(),
                created_at_unix_ms: self.created_at_ms,
                incomplete: row.incomplete,
            })
            .collect()
    }

    /// Whether a read of `scope` shows this entry's messages.
    pub fn in_scope(&self, scope: Scope<'_>) -> bool {
        match scope {
            Scope::User(_) => true,
            Scope::Conversation {
                conversation_id, ..
            } => self.conversation_id == conversation_id,
        }
    }
}

/// Entries read back from one user's stream: their stream ids and contents.
pub type Pending = Vec<(String, Entry)>;

pub struct Outbox {
    redis: Redis,
    prefix: String,
}

impl Outbox {
    pub fn new(pool: Pool, prefix: String, timeout: Duration) -> Self {
        Self {
            redis: Redis::new(pool, timeout),
            prefix,
        }
    }

    /// The user's stream. The same key the cache's script appends to.
    pub fn stream_key(&self, user_id: &str) -> String {
        format!("{}history:{{{user_id}}}:outbox", self.prefix)
    }

    /// The request ids of the user's entries: a retried save is queued once.
    fn ids_key(&self, user_id: &str) -> String {
        format!("{}:ids", self.stream_key(user_id))
    }

    fn users_key(&self) -> String {
        format!("{}history:outbox:users", self.prefix)
    }

    fn lock_key(&self) -> String {
        format!("{}history:outbox:lock", self.prefix)
    }

    /// Whether the user has saves waiting: a new save then queues behind them, so the
    /// user's messages reach MySQL in the order they were made.
    pub async fn has_pending(&self, user_id: &str) -> Result<bool, CacheError> {
        let key = self.stream_key(user_id);
        self.redis
            .run("exists", async |connection| {
                redis::cmd("EXISTS").arg(&key).query_async(connection).await
            })
            .await
    }

    /// Lists the user for the drainer. Called after the entry is in the stream: the
    /// drainer drops a user only once their stream is empty, then looks again.
    pub async fn list_user(&self, user_id: &str) -> Result<(), CacheError> {
        let key = self.users_key();
        let _: i64 = self
            .redis
            .run("sadd", async |connection| {
                redis::cmd("SADD")
                    .arg(&key)
                    .arg(user_id)
                    .query_async(connection)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Up to `count` users with entries, in no order.
    pub async fn users(&self, count: usize) -> Result<Vec<String>, CacheError> {
        let key = self.users_key();
        self.redis
            .run("srandmember", async |connection| {
                redis::cmd("SRANDMEMBER")
                    .arg(&key)
                    .arg(count)
                    .query_async(connection)
                    .await
            })
            .await
    }

    /// How many users have entries: the backlog gauge.
    pub async fn user_count(&self) -> Result<u64, CacheError> {
        let key = self.users_key();
        self.redis
            .run("scard", async |connection| {
                redis::cmd("SCARD").arg(&key).query_async(connection).await
            })
            .await
    }

    /// The user's oldest `count` entries, oldest first. An entry that is not ours (not
    /// JSON of an [`Entry`]) is skipped with an error logged, and left for an operator.
    pub async fn oldest(&self, user_id: &str, count: usize) -> Result<Pending, CacheError> {
        let key = self.stream_key(user_id);
        let raw: Vec<(String, Vec<(String, String)>)> = self
            .redis
            .run("xrange", async |connection| {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(connection)
                    .await
            })
            .await?;
        let mut entries = Vec::with_capacity(raw.len());
        for (id, fields) in raw {
            let Some((_, json)) = fields.iter().find(|(name, _)| name == "save") else {
                tracing::error!(stream = %key, %id, "outbox entry without a save field");
                continue;
            };
            match serde_json::from_str(json) {
                Ok(entry) => entries.push((id, entry)),
                Err(error) => {
                    tracing::error!(stream = %key, %id, %error, "outbox entry is not a save");
                }
            }
        }
        Ok(entries)
    }

    /// Removes drained entries, and their request ids.
    pub async fn remove(&self, user_id: &str, drained: &Pending) -> Result<(), CacheError> {
        if drained.is_empty() {
            return Ok(());
        }
        let (stream, request_ids) = (self.stream_key(user_id), self.ids_key(user_id));
        let ids: Vec<&str> = drained.iter().map(|(id, _)| id.as_str()).collect();
        let requests: Vec<&str> = drained
            .iter()
            .map(|(_, entry)| entry.request_id.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        let _: () = self
            .redis
            .run("xdel", async |connection| {
                let mut pipe = redis::pipe();
                pipe.atomic().cmd("XDEL").arg(&stream).arg(&ids).ignore();
                if !requests.is_empty() {
                    pipe.cmd("SREM").arg(&request_ids).arg(&requests).ignore();
                }
                pipe.query_async(connection).await
            })
            .await?;
        Ok(())
    }

    /// Drops the user from the list once their stream is empty (Redis deletes an empty
    /// stream's key only when told: XDEL leaves it), then looks again, in case a save
    /// queued between the two.
    pub async fn unlist_if_empty(&self, user_id: &str) -> Result<(), CacheError> {
        let (stream, users) = (self.stream_key(user_id), self.users_key());
        let left: u64 = self
            .redis
            .run("xlen", async |connection| {
                redis::cmd("XLEN")
                    .arg(&stream)
                    .query_async(connection)
                    .await
            })
            .await?;
        if left > 0 {
            return Ok(());
        }
        let ids = self.ids_key(user_id);
        let _: i64 = self
            .redis
            .run("del", async |connection| {
                // Only if still empty: an entry added since keeps the stream.
                DELETE_EMPTY
                    .key(&stream)
                    .key(&ids)
                    .invoke_async(connection)
                    .await
            })
            .await?;
        let _: i64 = self
            .redis
            .run("srem", async |connection| {
                redis::cmd("SREM")
                    .arg(&users)
                    .arg(user_id)
                    .query_async(connection)
                    .await
            })
            .await?;
        if self.has_pending(user_id).await? {
            self.list_user(user_id).await?;
        }
        Ok(())
    }

    /// Takes the drainers' lock for [`LOCK_MS`] (or keeps it, when `token` holds it):
    /// one replica drains at a time, so each user's entries reach MySQL in order.
    pub async fn lock(&self, token: &str) -> Result<bool, CacheError> {
        let key = self.lock_key();
        let taken: Option<String> = self
            .redis
            .run("lock", async |connection| {
                TAKE.key(&key)
                    .arg(token)
                    .arg(LOCK_MS)
                    .invoke_async(connection)
                    .await
            })
            .await?;
        Ok(taken.is_some())
    }

    pub async fn unlock(&self, token: &str) -> Result<(), CacheError> {
        let key = self.lock_key();
        let _: i64 = self
            .redis
            .run("unlock", async |connection| {
                RELEASE.key(&key).arg(token).invoke_async(connection).await
            })
            .await?;
        Ok(())
    }
}
