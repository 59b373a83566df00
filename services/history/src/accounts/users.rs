//! Users: create, read, change, and the first user of an empty database.

use chat_common::user::validate_user_id;
use chat_proto::{CreateUserRequest, UpdateUserRequest, User};
use mysql_async::Value;

use super::Accounts;
use super::error::AccountError;
use super::store::{NewUser, UserRow};

impl Accounts {
    pub async fn create_user(&self, request: &CreateUserRequest) -> Result<User, AccountError> {
        let new = self.new_user(request).await?;
        self.store().insert_user(new).await?;
        tracing::info!(user_id = %request.user_id, "user created");
        self.get_user(&request.user_id).await
    }

    pub async fn get_user(&self, user_id: &str) -> Result<User, AccountError> {
        validate_user_id(user_id)?;
        let user = self
            .store()
            .user(user_id)
            .await?
            .ok_or(AccountError::UserNotFound)?;
        Ok(user_message(&user))
    }

    /// Changes the fields present in the request; a limit of 0 or less clears it.
    pub async fn update_user(&self, request: &UpdateUserRequest) -> Result<User, AccountError> {
        validate_user_id(&request.user_id)?;
        let mut assignments = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        match request.daily_limit {
            Some(limit) if limit > 0 => {
                assignments.push("daily_limit = ?");
                values.push(limit.into());
            }
            Some(_) => assignments.push("daily_limit = NULL"),
            None => {}
        }
        match request.rate_limit_per_minute {
            Some(limit) if limit > 0 => {
                let limit = u32::try_from(limit).map_err(|_| AccountError::RateLimitTooLarge)?;
                assignments.push("rate_limit_per_minute = ?");
                values.push(limit.into());
            }
            Some(_) => assignments.push("rate_limit_per_minute = NULL"),
            None => {}
        }
        if let Some(disabled) = request.disabled {
            assignments.push("disabled = ?");
            values.push(disabled.into());
        }
        // Last: the costly hash only once the rest of the request is known to be good.
        if let Some(password) = &request.password {
            assignments.push("password_hash = ?");
            values.push(self.passwords().hash(password).await?.into());
        }
        self.store()
            .update_user(&request.user_id, &assignments, values)
            .await?;
        let user = self.get_user(&request.user_id).await?;
        if !assignments.is_empty() {
            // Which fields, never their values: one of them may be a password hash.
            tracing::info!(user_id = %request.user_id, fields = assignments.len(), "user updated");
        }
        Ok(user)
    }

    /// Creates the user only if there is no user at all; answers whether it did.
    /// Replicas starting together create one first user between them.
    pub async fn bootstrap(&self, request: &CreateUserRequest) -> Result<bool, AccountError> {
        // Every gateway asks at every start: once there are users, answer before hashing
        // the password (tens of milliseconds of CPU and 19 MiB each time). The insert
        // below still checks again under the lock.
        if self.store().any_user().await? {
            // The same answer to a bad request as when there are none.
            validate_user_id(&request.user_id)?;
            if let Some(password) = &request.password {
                super::passwords::check(password)?;
            }
            return Ok(false);
        }
        let new = self.new_user(request).await?;
        let created = self.store().insert_first_user(new).await?;
        if created {
            tracing::info!(user_id = %request.user_id, "first user created");
        }
        Ok(created)
    }

    /// The row to insert for a request, validated, its password hashed.
    async fn new_user<'a>(
        &self,
        request: &'a CreateUserRequest,
    ) -> Result<NewUser<'a>, AccountError> {
        validate_user_id(&request.user_id)?;
        let password_hash = match &request.password {
            Some(password) => Some(self.passwords().hash(password).await?),
            None => None,
        };
        Ok(NewUser {
            user_id: &request.user_id,
            password_hash,
            daily_limit: request.daily_limit.filter(|limit| *limit > 0),
            rate_limit_per_minute: request.rate_limit_per_minute.filter(|limit| *limit > 0),
        })
    }
}

fn user_message(user: &UserRow) -> User {
    User {
        user_id: user.user_id.clone(),
        has_password: user.password_hash.is_some(),
        daily_limit: user.daily_limit,
        rate_limit_per_minute: user.rate_limit_per_minute,
        disabled: user.disabled,
        created_at_unix_ms: user.created_at_unix_ms,
    }
}
