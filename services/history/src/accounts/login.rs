//! Password logins and the sessions they open.
//!
//! A wrong password, an unknown user, a user without a password and a disabled user
//! all get the same answer after the same work (an argon2 check), and all count as a
//! failure against the account and the client address. Past `LOGIN_MAX_FAILURES` in
//! `LOGIN_FAILURE_WINDOW_SECONDS`, either one is refused without a check until its
//! window ends.

use chat_common::user::validate_user_id;
use chat_proto::{LoginRequest, LoginResponse, Principal};
use secrecy::ExposeSecret;

use super::error::AccountError;
use super::sessions::{Attempt, check_client_addr};
use super::{Accounts, principal};
use crate::metrics::{self, LoginOutcome};

impl Accounts {
    pub async fn login(&self, request: &LoginRequest) -> Result<LoginResponse, AccountError> {
        validate_user_id(&request.user_id)?;
        check_client_addr(&request.client_addr)?;
        let attempt = Attempt {
            user_id: &request.user_id,
            client_addr: &request.client_addr,
        };
        if let Some(seconds) = self.sessions().locked_for(&attempt).await? {
            metrics::login(LoginOutcome::LockedOut);
            tracing::info!(user_id = %request.user_id, client_addr = %request.client_addr, "login refused: too many failures");
            return Err(AccountError::TooManyFailures(seconds));
        }
        let Some(principal) = self
            .check_password(&request.user_id, &request.password)
            .await?
        else {
            metrics::login(LoginOutcome::Refused);
            self.sessions().count_failure(&attempt).await?;
            tracing::info!(user_id = %request.user_id, client_addr = %request.client_addr, "login failed");
            return Err(AccountError::WrongPassword);
        };
        if let Err(error) = self.sessions().clear_failures(&principal.user_id).await {
            tracing::warn!(%error, "clearing the failed logins of the account failed");
        }
        let session_id = self.sessions().create(&principal.user_id).await?;
        metrics::login(LoginOutcome::Ok);
        tracing::info!(user_id = %principal.user_id, "logged in");
        Ok(LoginResponse {
            session_id: session_id.expose_secret().to_owned(),
            principal: Some(principal),
            expires_in_seconds: i64::try_from(self.sessions().ttl_seconds).unwrap_or(i64::MAX),
        })
    }

    /// The principal behind a live session of a user that still exists and is enabled.
    pub async fn session(&self, session_id: &str) -> Result<Principal, AccountError> {
        let user = match self.sessions().user_of(session_id).await? {
            Some(user_id) => self.store().user(&user_id).await?,
            None => None,
        };
        match user {
            Some(user) if !user.disabled => {
                metrics::session_check(true);
                Ok(principal(&user, ""))
            }
            _ => {
                metrics::session_check(false);
                Err(AccountError::InvalidCredential)
            }
        }
    }

    /// Ends the session; ending one that is gone already is not an error.
    pub async fn logout(&self, session_id: &str) -> Result<(), AccountError> {
        self.sessions().delete(session_id).await
    }

    /// The principal when the password is the user's and the user may log in. Costs one
    /// argon2 check whatever the case, so the time taken tells nothing.
    async fn check_password(
        &self,
        user_id: &str,
        password: &str,
    ) -> Result<Option<Principal>, AccountError> {
        let user = self.store().user(user_id).await?;
        let stored = user.as_ref().and_then(|user| user.password_hash.as_deref());
        let matched = self.passwords().verify(password, stored).await?;
        Ok(user
            .filter(|user| matched && !user.disabled)
            .map(|user| principal(&user, "")))
    }
}
