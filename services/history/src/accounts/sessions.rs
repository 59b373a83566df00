//! The Redis side of accounts: UI sessions, and the failed-login counters that slow
//! down password guessing.
//!
//! Keys, under `REDIS_KEY_PREFIX`: `session:<sha256 of the session id>` → user id, with
//! the session's TTL (a copy of Redis leaks no usable session id);
//! `login_failures:user:<user id>` and `login_failures:addr:<client address>` → failures
//! in the current window, expiring with it. Every operation touches one key, so all of
//! them work unchanged on Redis Cluster.

use std::sync::LazyLock;
use std::time::Duration;

use chat_common::redis::{Connection, Pool};
use redis::Script;
use secrecy::{ExposeSecret, SecretString};

use super::error::AccountError;
use super::keys;
use crate::metrics;

/// Counts one failure; starts the window on the first.
static COUNT_FAILURE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/count_failure.lua")));

pub struct SessionStore {
    pool: Pool,
    /// `REDIS_KEY_PREFIX`, shared with the history cache.
    prefix: String,
    /// Per-operation timeout, so a Redis outage answers promptly.
    timeout: Duration,
    /// `SESSION_TTL_SECONDS`: a session ends then even while in use.
    pub ttl_seconds: u64,
    /// `LOGIN_MAX_FAILURES`: failures allowed per window before logins are refused.
    max_failures: u32,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`: counted from the first failure.
    failure_window_seconds: u64,
}

/// Where failed logins are counted: the account, and the address when known.
pub struct Attempt<'a> {
    pub user_id: &'a str,
    pub client_addr: &'a str,
}

impl SessionStore {
    pub fn new(pool: Pool, prefix: String, timeout: Duration, settings: &crate::Settings) -> Self {
        Self {
            pool,
            prefix,
            timeout,
            ttl_seconds: settings.session_ttl_seconds,
            max_failures: settings.login_max_failures,
            failure_window_seconds: settings.login_failure_window_seconds,
        }
    }

    /// Stores a new session of `user_id`; answers its id.
    pub async fn create(&self, user_id: &str) -> Result<SecretString, AccountError> {
        let session_id = keys::new_session_id()?;
        let key = self.session_key(session_id.expose_secret());
        self.run("set_session", async |connection| {
            redis::cmd("SET")
                .arg(&key)
                .arg(user_id)
                .arg("EX")
                .arg(self.ttl_seconds)
                .query_async::<()>(connection)
                .await
        })
        .await?;
        Ok(session_id)
    }

    /// The user of a live session.
    pub async fn user_of(&self, session_id: &str) -> Result<Option<String>, AccountError> {
        if !keys::is_session_id(session_id) {
            return Ok(None);
        }
        let key = self.session_key(session_id);
        self.run("get_session", async |connection| {
            redis::cmd("GET").arg(&key).query_async(connection).await
        })
        .await
    }

    pub async fn delete(&self, session_id: &str) -> Result<(), AccountError> {
        if !keys::is_session_id(session_id) {
            return Ok(());
        }
        let key = self.session_key(session_id);
        self.run("del_session", async |connection| {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(connection)
                .await
        })
        .await
    }

    /// Seconds until the attempt may be made, when its account or address has failed
    /// too often in the current window.
    pub async fn locked_for(&self, attempt: &Attempt<'_>) -> Result<Option<u64>, AccountError> {
        let keys = self.failure_keys(attempt);
        let counters: Vec<(Option<u32>, i64)> = self
            .run("get_login_failures", async |connection| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("GET").arg(key).cmd("TTL").arg(key);
                }
                let flat: Vec<(Option<u32>, i64)> = pipe.query_async(connection).await?;
                Ok(flat)
            })
            .await?;
        let locked = counters
            .into_iter()
            .filter(|(failures, _)| failures.unwrap_or(0) >= self.max_failures)
            .map(|(_, ttl)| {
                u64::try_from(ttl)
                    .unwrap_or(self.failure_window_seconds)
                    .max(1)
            })
            .max();
        Ok(locked)
    }

    /// Counts a failed attempt against its account and its address.
    pub async fn count_failure(&self, attempt: &Attempt<'_>) -> Result<(), AccountError> {
        for key in self.failure_keys(attempt) {
            let mut invocation = COUNT_FAILURE.key(&key);
            invocation.arg(self.failure_window_seconds);
            self.run("count_login_failure", async |connection| {
                invocation.invoke_async::<i64>(connection).await
            })
            .await?;
        }
        Ok(())
    }

    /// Forgets the account's failures after a successful login. The address keeps its
    /// count: one right password must not reset a guesser trying many accounts.
    pub async fn clear_failures(&self, user_id: &str) -> Result<(), AccountError> {
        let key = self.user_failure_key(user_id);
        self.run("del_login_failures", async |connection| {
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<()>(connection)
                .await
        })
        .await
    }

    fn session_key(&self, session_id: &str) -> String {
        format!("{}session:{}", self.prefix, keys::sha256_hex(session_id))
    }

    fn user_failure_key(&self, user_id: &str) -> String {
        format!("{}login_failures:user:{user_id}", self.prefix)
    }

    fn failure_keys(&self, attempt: &Attempt<'_>) -> Vec<String> {
        let mut keys = vec![self.user_failure_key(attempt.user_id)];
        if !attempt.client_addr.is_empty() {
            keys.push(format!(
                "{}login_failures:addr:{}",
                self.prefix, attempt.client_addr
            ));
        }
        keys
    }

    /// Runs one Redis operation under the store's timeout, traced and timed.
    async fn run<T>(
        &self,
        name: &'static str,
        operation: impl AsyncFnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, AccountError> {
        let work = async {
            let mut connection = self
                .pool
                .get()
                .await
                .map_err(AccountError::RedisUnavailable)?;
            operation(&mut connection)
                .await
                .map_err(AccountError::Redis)
        };
        let timed = async {
            tokio::time::timeout(self.timeout, work)
                .await
                .map_err(|_| AccountError::RedisTimedOut)?
        };
        chat_common::observe::db(metrics::REDIS, name, timed).await
    }
}

/// Accepts what a gateway reports as a client address (an IPv4 or IPv6 address, maybe
/// with a port): it becomes part of a Redis key.
pub fn check_client_addr(client_addr: &str) -> Result<(), AccountError> {
    let fits = client_addr.len() <= 64 && client_addr.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        Ok(())
    } else {
        Err(AccountError::BadClientAddr)
    }
}
