//! API keys: made, listed, revoked, and checked on behalf of the gateway.

use chat_common::user::validate_user_id;
use chat_proto::{ApiKey, CreatedKey, Principal};
use secrecy::ExposeSecret;

use super::Accounts;
use super::error::AccountError;
use super::keys::{self, NewKey};
use super::store::{KeyOwner, KeyRow, MAX_KEY_NAME_CHARS};
use crate::metrics::{self, AuthOutcome};

impl Accounts {
    /// A new key for the user: the whole key is in this answer and nowhere else.
    pub async fn create_key(&self, user_id: &str, name: &str) -> Result<CreatedKey, AccountError> {
        validate_user_id(user_id)?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_KEY_NAME_CHARS {
            return Err(AccountError::BadKeyName);
        }
        let new = NewKey::generate()?;
        self.store()
            .insert_key(&new.key_id, user_id, name, &new.prefix, &new.hash)
            .await?;
        let info = self
            .store()
            .key(&new.key_id)
            .await?
            .ok_or(AccountError::KeyNotFound)?;
        tracing::info!(user_id, key_id = %new.key_id, "api key created");
        Ok(CreatedKey {
            key: new.key.expose_secret().to_owned(),
            info: Some(key_message(info)),
        })
    }

    /// The user's keys, revoked ones included, without any secret.
    pub async fn list_keys(&self, user_id: &str) -> Result<Vec<ApiKey>, AccountError> {
        validate_user_id(user_id)?;
        if self.store().user(user_id).await?.is_none() {
            return Err(AccountError::UserNotFound);
        }
        let keys = self.store().keys_of(user_id).await?;
        Ok(keys.into_iter().map(key_message).collect())
    }

    /// Revokes the key; revoking a revoked key again is not an error.
    pub async fn revoke_key(&self, key_id: &str) -> Result<(), AccountError> {
        if !keys::is_key_id(key_id) {
            return Err(AccountError::KeyNotFound);
        }
        if self.store().revoke_key(key_id).await? {
            tracing::info!(key_id, "api key revoked");
            return Ok(());
        }
        match self.store().key(key_id).await? {
            Some(_) => Ok(()),
            None => Err(AccountError::KeyNotFound),
        }
    }

    /// The principal behind a key that is well formed, known, unrevoked and whose user
    /// is enabled; `InvalidCredential` for anything else.
    pub async fn authenticate(&self, key: &str) -> Result<Principal, AccountError> {
        let (outcome, principal) = self.check_key(key).await?;
        metrics::authentication(outcome);
        principal.ok_or(AccountError::InvalidCredential)
    }

    async fn check_key(&self, key: &str) -> Result<(AuthOutcome, Option<Principal>), AccountError> {
        let Some(key_id) = keys::key_id_of(key) else {
            return Ok((AuthOutcome::Malformed, None));
        };
        let Some(owner) = self.store().key_owner(key_id).await? else {
            return Ok((AuthOutcome::Unknown, None));
        };
        if !keys::matches(key, &owner.secret_hash) {
            return Ok((AuthOutcome::Unknown, None));
        }
        if owner.revoked {
            return Ok((AuthOutcome::Revoked, None));
        }
        if owner.disabled {
            return Ok((AuthOutcome::Disabled, None));
        }
        if owner.touch_due
            && let Err(error) = self.store().touch_key(key_id).await
        {
            // The key is good; when it was last used is only information.
            tracing::warn!(%error, key_id, "recording the key's last use failed");
        }
        Ok((AuthOutcome::Ok, Some(key_principal(owner, key_id))))
    }
}

fn key_principal(owner: KeyOwner, key_id: &str) -> Principal {
    Principal {
        user_id: owner.user_id,
        daily_limit: owner.daily_limit,
        rate_limit_per_minute: owner.rate_limit_per_minute,
        key_id: key_id.to_owned(),
    }
}

fn key_message(row: KeyRow) -> ApiKey {
    ApiKey {
        key_id: row.key_id,
        user_id: row.user_id,
        name: row.name,
        prefix: row.prefix,
        created_at_unix_ms: row.created_at_unix_ms,
        last_used_at_unix_ms: row.last_used_at_unix_ms,
        revoked_at_unix_ms: row.revoked_at_unix_ms,
    }
}
