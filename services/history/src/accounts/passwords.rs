//! Password hashes: argon2id with the crate's default parameters (19 MiB, 2 passes),
//! stored as PHC strings, so the parameters can change later without breaking old
//! hashes. Hashing takes tens of milliseconds of CPU and 19 MiB: it runs on the threads
//! of [`super::hashers`], in memory they keep while busy and give back once idle.

use std::sync::Arc;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::password_hash::{self, CustomizedPasswordHasher, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

use super::error::AccountError;
use super::hashers::{Hashers, KEEP_MEMORY_IDLE, argon2};
use super::keys;

pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longer inputs only cost CPU: no one types a password of a kilobyte.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    hashers: Hashers,
    /// The hash of a random password nobody knows. A login for a user who does not
    /// exist (or has no password) is checked against it, so it takes as long as a
    /// wrong password and the answer time does not reveal which user ids exist.
    decoy: Arc<str>,
}

impl Passwords {
    pub async fn new() -> Result<Self, AccountError> {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        let hashers = Hashers::start(cores, KEEP_MEMORY_IDLE)?;
        let unknowable = keys::new_session_id()?;
        let decoy = hashers.run(move || hash(&unknowable)).await??;
        Ok(Self {
            hashers,
            decoy: decoy.into(),
        })
    }

    /// The PHC string of a new, acceptable password.
    pub async fn hash(&self, password: &str) -> Result<String, AccountError> {
        check(password)?;
        let password = SecretString::from(password);
        self.hashers.run(move || hash(&password)).await?
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
        let matched = self
            .hashers
            .run(move || matches(&password, &stored))
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

/// The PHC string of `password` under argon2id with the crate's default parameters and
/// a new random salt.
pub(super) fn hash(password: &SecretString) -> Result<String, AccountError> {
    InKeptMemory
        .hash_password(password.expose_secret().as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|_| AccountError::Hashing)
}

/// Whether `password` hashes to the PHC string `stored`, with the algorithm, version
/// and parameters it names (compared in constant time).
fn matches(password: &SecretString, stored: &str) -> Result<bool, AccountError> {
    let stored = PasswordHash::new(stored).map_err(|_| AccountError::Hashing)?;
    match InKeptMemory.verify_password(password.expose_secret().as_bytes(), &stored) {
        Ok(()) => Ok(true),
        Err(password_hash::Error::PasswordInvalid) => Ok(false),
        Err(_) => Err(AccountError::Hashing),
    }
}

/// Argon2 as the crate hashes behind password-hash's traits, but in this thread's kept
/// memory ([`argon2`]): the traits' own salts, PHC parsing and constant-time check (verifying
/// comes with them) stay the crate's; only where the work happens is ours.
struct InKeptMemory;

impl CustomizedPasswordHasher<PasswordHash> for InKeptMemory {
    type Params = Params;

    fn hash_password_customized(
        &self,
        password: &[u8],
        salt: &[u8],
        algorithm: Option<&str>,
        version: Option<u32>,
        params: Params,
    ) -> password_hash::Result<PasswordHash> {
        let algorithm = algorithm
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let mut output = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
        argon2(
            &Argon2::new(algorithm, version, params.clone()),
            password,
            salt,
            &mut output,
        )?;
        Ok(PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(version.into()),
            params: ParamsString::try_from(&params)?,
            salt: Some(Salt::new(salt)?),
            hash: Some(Output::new(&output)?),
        })
    }
}

impl PasswordHasher<PasswordHash> for InKeptMemory {
    fn hash_password_with_salt(
        &self,
        password: &[u8],
        salt: &[u8],
    ) -> password_hash::Result<PasswordHash> {
        self.hash_password_customized(password, salt, None, None, Params::default())
    }
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

    /// Our hashes verify with argon2's own API and its hashes with ours: the PHC strings
    /// stored before and after are the same format.
    #[test]
    fn hashes_are_argon2s_own() -> Result<(), AccountError> {
        let password = SecretString::from("correct horse");
        let ours = hash(&password)?;
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", ours.as_str())
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong horse", ours.as_str())
                .is_err()
        );
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .map_err(|_| AccountError::Hashing)?
            .to_string();
        assert!(matches(&password, &theirs)?);
        assert!(!matches(&SecretString::from("wrong horse"), &theirs)?);
        // Other parameters, as a future change of them would leave in the table.
        let lighter = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, Some(16)).map_err(|_| AccountError::Hashing)?,
        )
        .hash_password(b"correct horse")
        .map_err(|_| AccountError::Hashing)?
        .to_string();
        assert!(matches(&password, &lighter)?);
        assert!(!matches(&SecretString::from("wrong horse"), &lighter)?);
        assert!(matches!(
            matches(&password, "not a phc string"),
            Err(AccountError::Hashing)
        ));
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
