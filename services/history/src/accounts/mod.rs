//! Accounts (the `AccountService`, beside the history on the same port): users with
//! their limit overrides, API keys, password logins and UI sessions. The gateway asks
//! who is behind every credential, through a short cache of its own.
//!
//! Users and keys live in MySQL (`users`, `api_keys`, migration 0004); sessions and
//! failed-login counters in Redis (`sessions.rs`). Keys are random, shown once, stored
//! as SHA-256 (`keys.rs`); passwords as argon2id (`passwords.rs`). Every refused
//! credential gets one generic message, and secrets reach no log, span or error.
//!
//! The operations are in `users.rs`, `api_keys.rs` and `login.rs`; `service.rs` is the
//! gRPC edge over them.

mod api_keys;
mod error;
mod hashers;
mod keys;
mod login;
mod passwords;
mod service;
mod sessions;
mod store;
mod users;

use std::sync::Arc;
use std::time::Duration;

use chat_proto::Principal;

pub use error::AccountError;

use crate::Settings;
use passwords::Passwords;
use sessions::SessionStore;
use store::AccountStore;

/// The account service; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    /// Users and keys (MySQL).
    store: AccountStore,
    /// Sessions and failed-login counters (Redis).
    sessions: SessionStore,
    /// Argon2id hashing, bounded to a few at a time.
    passwords: Passwords,
}

impl Accounts {
    /// Accounts over the history's MySQL pool (already migrated) and a Redis pool.
    pub async fn new(settings: &Settings, history: &crate::History) -> anyhow::Result<Self> {
        let mysql = history.mysql_pool();
        let timeout = Duration::from_millis(settings.store_timeout_ms);
        let redis = chat_common::redis::pool(&settings.redis_addr, 16, timeout)?;
        anyhow::ensure!(
            settings.session_ttl_seconds > 0,
            "SESSION_TTL_SECONDS must be positive"
        );
        anyhow::ensure!(
            settings.login_max_failures > 0 && settings.login_failure_window_seconds > 0,
            "LOGIN_MAX_FAILURES and LOGIN_FAILURE_WINDOW_SECONDS must be positive"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                store: AccountStore::new(mysql, timeout, history.shared_breaker()),
                sessions: SessionStore::new(
                    redis,
                    settings.redis_key_prefix.clone(),
                    timeout,
                    settings,
                ),
                passwords: Passwords::new().await?,
            }),
        })
    }

    fn store(&self) -> &AccountStore {
        &self.inner.store
    }

    fn sessions(&self) -> &SessionStore {
        &self.inner.sessions
    }

    fn passwords(&self) -> &Passwords {
        &self.inner.passwords
    }
}

/// Who a credential belongs to, with their limit overrides; `key_id` is empty for a
/// session.
fn principal(user: &store::UserRow, key_id: &str) -> Principal {
    Principal {
        user_id: user.user_id.clone(),
        daily_limit: user.daily_limit,
        rate_limit_per_minute: user.rate_limit_per_minute,
        key_id: key_id.to_owned(),
    }
}
