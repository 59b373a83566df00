//! The pointer to the user's latest conversation (`history:{u}:latest`): what a chat
//! naming no conversation goes to. Every save writes it (in the append script), a new
//! conversation sets it, MySQL's answer fills it when it is missing, and a delete drops it.

use super::{Cache, CacheError, CachedMessage, LATEST, Scope, parsed};

/// What the pointer says of the user's latest conversation.
pub enum Latest {
    /// The conversation, with its newest messages, newest first, from its cached list.
    Cached(String, Vec<CachedMessage>),
    /// The conversation; its list is not cached.
    To(String),
    /// No pointer.
    Nowhere,
}

impl Cache {
    /// The key naming the conversation the user last saved to.
    pub(super) fn latest_key(&self, user_id: &str) -> String {
        format!("{}history:{{{user_id}}}:latest", self.prefix)
    }

    /// The conversation the user last saved to or made, as far as the cache knows: what a
    /// chat naming none goes to. Every save and every new conversation writes it; a
    /// delete drops it.
    pub async fn latest(&self, user_id: &str) -> Result<Option<String>, CacheError> {
        let key = self.latest_key(user_id);
        self.redis
            .run("get", async |connection| {
                redis::cmd("GET").arg(&key).query_async(connection).await
            })
            .await
    }

    /// In one round trip: the conversation the user last saved to or made (see
    /// [`Cache::latest`]) and its newest `limit` cached messages.
    pub async fn latest_recent(&self, user_id: &str, limit: u32) -> Result<Latest, CacheError> {
        // The list keys' common start: the conversation's list is this plus its id.
        let (list, _) = self.keys(Scope::Conversation {
            user_id,
            conversation_id: "",
        });
        let mut invocation = LATEST.key(self.latest_key(user_id));
        invocation.arg(list).arg(limit);
        let answer: Option<(String, Vec<String>)> = self
            .redis
            .run("latest", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok(match answer {
            None => Latest::Nowhere,
            Some((conversation_id, raw)) => match parsed(&raw)? {
                Some(newest) => Latest::Cached(conversation_id, newest),
                None => Latest::To(conversation_id),
            },
        })
    }

    /// Makes `conversation_id` the user's latest: a conversation just made.
    pub async fn set_latest(&self, user_id: &str, conversation_id: &str) -> Result<(), CacheError> {
        self.write_latest(user_id, conversation_id, false).await
    }

    /// Records what MySQL said is the user's latest conversation, unless a save or a new
    /// conversation named one since (they write it unconditionally).
    pub async fn fill_latest(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> Result<(), CacheError> {
        self.write_latest(user_id, conversation_id, true).await
    }

    async fn write_latest(
        &self,
        user_id: &str,
        conversation_id: &str,
        only_if_absent: bool,
    ) -> Result<(), CacheError> {
        let mut command = redis::cmd("SET");
        command
            .arg(self.latest_key(user_id))
            .arg(conversation_id)
            .arg("EX")
            .arg(self.ttl_secs);
        if only_if_absent {
            command.arg("NX");
        }
        self.redis
            .run("set", async |connection| {
                command.query_async::<()>(connection).await
            })
            .await
    }

    /// Forgets which conversation is the user's latest: the one named is gone.
    pub async fn forget_latest(&self, user_id: &str) -> Result<(), CacheError> {
        self.delete(&[self.latest_key(user_id)]).await
    }
}
