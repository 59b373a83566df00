//! Password hashes: argon2id with the crate's default parameters (19 MiB, 2 passes),
//! stored as PHC strings, so the parameters can change later without breaking old
//! hashes. Hashing takes tens of milliseconds of CPU and 19 MiB: it runs on the blocking
//! pool, a few at a time, so a burst of logins cannot starve the runtime or the memory.

use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use super::error::AccountError;
use super::keys;

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longer inputs only cost CPU: no one types a password of a kilobyte.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    /// One permit per core: more hashes at once would only queue for the CPU.
    permits: Arc<Semaphore>,
    /// The hash of a random password nobody knows. A login for a user who does not
    /// exist (or has no password) is checked against it, so it takes as long as a
    /// wrong password and the answer time does not reveal which user ids exist.
    decoy: Arc<str>,
}

impl Passwords {
    pub async fn new() -> Result<Self, AccountError> {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let permits = Arc::new(Semaphore::new(cores));
        let unknowable = keys::new_session_id()?;
        let decoy = blocking(&permits, move || hash(&unknowable)).await??;
        Ok(Self {
            permits,
            decoy: decoy.into(),
        })
    }

    /// The PHC string of a new, acceptable password.
    pub async fn hash(&self, password: &str) -> Result<String, AccountError> {
        check(password)?;
        let password = SecretString::from(password);
        blocking(&self.permits, move || hash(&password)).await?
    }

    /// Whether `password` matches `stored`; with no stored hash, spends the same time
    /// and answers false.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, AccountError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(false);
        }
        let (stored, real): (Arc<str>, bool) = match stored {
            Some(stored) => (stored.into(), true),
            None => (self.decoy.clone(), false),
        };
        let password = SecretString::from(password);
        let matched = blocking(&self.permits, move || {
            match Argon2::default().verify_password(password.expose_secret().as_bytes(), &*stored) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(_) => Err(AccountError::Hashing),
            }
        })
        .await??;
        Ok(matched && real)
    }
}

/// Refuses passwords too short to resist guessing, or absurdly long.
pub fn check(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AccountError::PasswordTooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::PasswordTooLong);
    }
    Ok(())
}

fn hash(password: &SecretString) -> Result<String, AccountError> {
    Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|_| AccountError::Hashing)
}

/// Runs `work` on the blocking pool once a permit is free.
async fn blocking<T: Send + 'static>(
    permits: &Semaphore,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AccountError> {
    let _permit = permits.acquire().await.map_err(|_| AccountError::Hashing)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| AccountError::Hashing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() -> Result<(), AccountError> {
        let passwords = Passwords::new().await?;
        let stored = passwords.hash("correct horse").await?;
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));
        assert!(passwords.verify("correct horse", Some(&stored)).await?);
        assert!(!passwords.verify("wrong horse", Some(&stored)).await?);
        assert!(!passwords.verify("correct horse", None).await?);
        Ok(())
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(matches!(
            check("1234567"),
            Err(AccountError::PasswordTooShort)
        ));
        // Characters, not bytes: eight Chinese characters are enough.
        assert!(check("密码密码密码密码").is_ok());
        assert!(matches!(
            check(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(AccountError::PasswordTooLong)
        ));
    }
}
