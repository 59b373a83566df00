//! The MySQL side of accounts: the `users` and `api_keys` tables of migration 0004.
//! Every call is timed out, traced and counted like the history's own.

use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::{FromRow, Queryable};
use mysql_async::{Conn, Params, Pool, Value};

use super::error::AccountError;
use crate::breaker::Breaker;
use crate::metrics;

pub const MAX_KEY_NAME_CHARS: usize = 100;

/// MySQL's error numbers for a duplicate key and for a foreign key with no parent row.
const DUPLICATE_ENTRY: u16 = 1062;
const NO_REFERENCED_ROW: u16 = 1452;

/// The bootstrap check and insert run under this lock, so replicas starting together
/// cannot each create a first user.
const BOOTSTRAP_LOCK: &str = "chat_accounts_bootstrap";
const BOOTSTRAP_LOCK_WAIT_SECONDS: u64 = 10;

/// A key's `last_used_at` is written at most this often: a write per request would
/// cost more than the column is worth.
const TOUCH_INTERVAL_SECONDS: u32 = 60;

// Rows are read by column name, hence the aliases.
const USER_COLUMNS: &str = "user_id, password_hash, daily_limit, rate_limit_per_minute, disabled,
    CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED) AS created_at_unix_ms";
const KEY_COLUMNS: &str = "key_id, user_id, name, prefix,
    CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED) AS created_at_unix_ms,
    CAST(UNIX_TIMESTAMP(last_used_at) * 1000 AS SIGNED) AS last_used_at_unix_ms,
    CAST(UNIX_TIMESTAMP(revoked_at) * 1000 AS SIGNED) AS revoked_at_unix_ms";

/// One row of `users`.
#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub daily_limit: Option<i64>,
    pub rate_limit_per_minute: Option<u32>,
    pub disabled: bool,
    pub created_at_unix_ms: i64,
}

/// One row of `api_keys`, without its hash.
#[derive(Debug, Clone, FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub user_id: String,
    pub name: String,
    pub prefix: String,
    pub created_at_unix_ms: i64,
    pub last_used_at_unix_ms: Option<i64>,
    pub revoked_at_unix_ms: Option<i64>,
}

/// A user as `users` holds it, before it exists.
pub struct NewUser<'a> {
    pub user_id: &'a str,
    pub password_hash: Option<String>,
    pub daily_limit: Option<i64>,
    pub rate_limit_per_minute: Option<u32>,
}

/// What an API key authenticates as: the key's hash and state, and its user's.
#[derive(Debug, Clone, FromRow)]
pub struct KeyOwner {
    pub secret_hash: Vec<u8>,
    pub revoked: bool,
    /// Whether `last_used_at` is older than the touch interval, or unset.
    pub touch_due: bool,
    pub user_id: String,
    pub daily_limit: Option<i64>,
    pub rate_limit_per_minute: Option<u32>,
    pub disabled: bool,
}

pub struct AccountStore {
    /// The history's pool: one set of MySQL connections for the whole service.
    pool: Pool,
    /// Per-operation timeout, so a MySQL outage answers promptly.
    timeout: Duration,
    /// The history's breaker: after a MySQL failure, calls fail at once for a second
    /// instead of each waiting out the timeout (the gateway then uses what it knew).
    breaker: Arc<Breaker>,
}

impl AccountStore {
    pub fn new(pool: Pool, timeout: Duration, breaker: Arc<Breaker>) -> Self {
        Self {
            pool,
            timeout,
            breaker,
        }
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserRow>, AccountError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ?");
        let mut connection = self.connection().await?;
        self.call("select_user", connection.exec_first(sql, (user_id,)))
            .await
    }

    /// Inserts the user; `UserExists` if the id is taken.
    pub async fn insert_user(&self, user: NewUser<'_>) -> Result<(), AccountError> {
        let mut connection = self.connection().await?;
        insert_user(self, &mut connection, user).await
    }

    /// Whether there is any user at all.
    pub async fn any_user(&self) -> Result<bool, AccountError> {
        let mut connection = self.connection().await?;
        let any: Option<i64> = self
            .call(
                "select_any_user",
                connection.query_first("SELECT 1 FROM users LIMIT 1"),
            )
            .await?;
        Ok(any.is_some())
    }

    /// Inserts the user if there is no user at all; answers whether it did.
    pub async fn insert_first_user(&self, user: NewUser<'_>) -> Result<bool, AccountError> {
        let mut connection = self.connection().await?;
        // Reset on its way back to the pool: no lock left on it (see `mysql_pool`).
        connection.reset_connection(true);
        let lock = format!("SELECT GET_LOCK(?, {BOOTSTRAP_LOCK_WAIT_SECONDS})");
        let locked: Option<i64> = self
            .call_waiting(
                "get_lock",
                Duration::from_secs(BOOTSTRAP_LOCK_WAIT_SECONDS),
                connection.exec_first(lock, (BOOTSTRAP_LOCK,)),
            )
            .await?;
        if locked != Some(1) {
            return Err(AccountError::BootstrapLockBusy);
        }
        let inserted = async {
            let any: Option<i64> = self
                .call(
                    "select_any_user",
                    connection.query_first("SELECT 1 FROM users LIMIT 1"),
                )
                .await?;
            if any.is_some() {
                return Ok(false);
            }
            insert_user(self, &mut connection, user)
                .await
                .map(|()| true)
        }
        .await;
        let released: Result<Option<i64>, _> = self
            .call(
                "release_lock",
                connection.exec_first("SELECT RELEASE_LOCK(?)", (BOOTSTRAP_LOCK,)),
            )
            .await;
        // A failed insert is the news; a lock not released after it is not (closing the
        // connection releases it anyway).
        let created = inserted?;
        released?;
        Ok(created)
    }

    /// Sets the given columns (`column = ?` or `column = NULL` each) of one user.
    pub async fn update_user(
        &self,
        user_id: &str,
        assignments: &[&str],
        mut values: Vec<Value>,
    ) -> Result<(), AccountError> {
        if assignments.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE users SET {} WHERE user_id = ?",
            assignments.join(", ")
        );
        values.push(user_id.into());
        let mut connection = self.connection().await?;
        self.call(
            "update_user",
            connection.exec_drop(sql, Params::Positional(values)),
        )
        .await
    }

    /// Inserts a key; `UserNotFound` if its user does not exist.
    pub async fn insert_key(
        &self,
        key_id: &str,
        user_id: &str,
        name: &str,
        prefix: &str,
        hash: &[u8],
    ) -> Result<(), AccountError> {
        let mut connection = self.connection().await?;
        let insert = connection.exec_drop(
            "INSERT INTO api_keys (key_id, user_id, name, prefix, secret_hash)
             VALUES (?, ?, ?, ?, ?)",
            (key_id, user_id, name, prefix, hash),
        );
        // A missing user is an answer, not a store failure to count.
        let inserted = self
            .call("insert_key", refused_as(NO_REFERENCED_ROW, insert))
            .await?;
        if inserted {
            Ok(())
        } else {
            Err(AccountError::UserNotFound)
        }
    }

    pub async fn key(&self, key_id: &str) -> Result<Option<KeyRow>, AccountError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = ?");
        let mut connection = self.connection().await?;
        self.call("select_key", connection.exec_first(sql, (key_id,)))
            .await
    }

    /// The user's keys, oldest first.
    pub async fn keys_of(&self, user_id: &str) -> Result<Vec<KeyRow>, AccountError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = ? ORDER BY created_at, key_id"
        );
        let mut connection = self.connection().await?;
        self.call("select_keys", connection.exec(sql, (user_id,)))
            .await
    }

    /// Marks the key revoked unless it already is; answers whether a key was changed.
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool, AccountError> {
        let mut connection = self.connection().await?;
        self.call(
            "revoke_key",
            connection.exec_drop(
                "UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP(3)
                 WHERE key_id = ? AND revoked_at IS NULL",
                (key_id,),
            ),
        )
        .await?;
        Ok(connection.affected_rows() > 0)
    }

    pub async fn key_owner(&self, key_id: &str) -> Result<Option<KeyOwner>, AccountError> {
        let mut connection = self.connection().await?;
        self.call(
            "select_key_owner",
            connection.exec_first(
                "SELECT k.secret_hash, k.revoked_at IS NOT NULL AS revoked,
                   (k.last_used_at IS NULL
                     OR k.last_used_at < CURRENT_TIMESTAMP(3) - INTERVAL ? SECOND) AS touch_due,
                   u.user_id, u.daily_limit, u.rate_limit_per_minute, u.disabled
                 FROM api_keys k JOIN users u ON u.user_id = k.user_id
                 WHERE k.key_id = ?",
                (TOUCH_INTERVAL_SECONDS, key_id),
            ),
        )
        .await
    }

    /// Records that the key was just used, unless another replica just did.
    pub async fn touch_key(&self, key_id: &str) -> Result<(), AccountError> {
        let mut connection = self.connection().await?;
        self.call(
            "touch_key",
            connection.exec_drop(
                "UPDATE api_keys SET last_used_at = CURRENT_TIMESTAMP(3)
                 WHERE key_id = ? AND (last_used_at IS NULL
                   OR last_used_at < CURRENT_TIMESTAMP(3) - INTERVAL ? SECOND)",
                (key_id, TOUCH_INTERVAL_SECONDS),
            ),
        )
        .await
    }

    async fn connection(&self) -> Result<Conn, AccountError> {
        if !self.breaker.closed() {
            return Err(AccountError::NoConnectionInTime);
        }
        let connection = match tokio::time::timeout(self.timeout, self.pool.get_conn()).await {
            Ok(outcome) => outcome.map_err(AccountError::Mysql),
            Err(_) => Err(AccountError::NoConnectionInTime),
        };
        if connection.is_err() {
            self.breaker.failed();
        }
        connection
    }

    /// Runs one MySQL operation under the store's timeout, traced and timed.
    async fn call<T>(
        &self,
        name: &'static str,
        operation: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, AccountError> {
        self.call_waiting(name, Duration::ZERO, operation).await
    }

    /// [`Self::call`] for an operation that may wait `extra` on the server by design.
    async fn call_waiting<T>(
        &self,
        name: &'static str,
        extra: Duration,
        operation: impl Future<Output = Result<T, mysql_async::Error>>,
    ) -> Result<T, AccountError> {
        let timed = async {
            match tokio::time::timeout(self.timeout + extra, operation).await {
                Ok(outcome) => outcome.map_err(AccountError::Mysql),
                Err(_) => Err(AccountError::MysqlTimedOut),
            }
        };
        let outcome = chat_common::observe::db(metrics::MYSQL, name, timed).await;
        match &outcome {
            // The server answered, if only with a refusal: it is there.
            Ok(_) | Err(AccountError::Mysql(mysql_async::Error::Server(_))) => {
                self.breaker.succeeded();
            }
            Err(_) => self.breaker.failed(),
        }
        outcome
    }
}

async fn insert_user(
    store: &AccountStore,
    connection: &mut Conn,
    user: NewUser<'_>,
) -> Result<(), AccountError> {
    let insert = connection.exec_drop(
        "INSERT INTO users (user_id, password_hash, daily_limit, rate_limit_per_minute)
         VALUES (?, ?, ?, ?)",
        (
            user.user_id,
            user.password_hash,
            user.daily_limit,
            user.rate_limit_per_minute,
        ),
    );
    // A taken id is an answer, not a store failure to count.
    let inserted = store
        .call("insert_user", refused_as(DUPLICATE_ENTRY, insert))
        .await?;
    if inserted {
        Ok(())
    } else {
        Err(AccountError::UserExists)
    }
}

/// An insert's outcome: `false` when the server refused it with error `code`.
async fn refused_as(
    code: u16,
    insert: impl Future<Output = Result<(), mysql_async::Error>>,
) -> Result<bool, mysql_async::Error> {
    match insert.await {
        Ok(()) => Ok(true),
        Err(mysql_async::Error::Server(server)) if server.code == code => Ok(false),
        Err(error) => Err(error),
    }
}
