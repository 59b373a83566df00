//! Password hashes: argon2id with the crate's default parameters (19 MiB, 2 passes),
//! stored as PHC strings, so the parameters can change later without breaking old
//! hashes. Hashing takes tens of milliseconds of CPU and 19 MiB: it runs on a thread of
//! its own, one per core, so a burst of logins cannot starve the runtime, and the memory
//! it leaves behind is bounded. (On tokio's blocking pool, any of its threads could hash,
//! and glibc kept a freed 19 MiB block in the arena of each one that had: a burst of
//! logins left the process some 150 MiB larger.)

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

use super::error::AccountError;
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
        let hashers = Hashers::start(cores)?;
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
            .run(move || {
                match Argon2::default()
                    .verify_password(password.expose_secret().as_bytes(), &*stored)
                {
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

/// The threads that hash, taking jobs in turn from one queue. They end when the last
/// [`Passwords`] holding the queue is dropped.
#[derive(Clone)]
struct Hashers {
    jobs: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Hashers {
    fn start(threads: usize) -> Result<Self, AccountError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok(job) = job else { return };
                        // A panicking job answers nothing (its caller sees the dropped
                        // answer); the thread goes on with the next.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map_err(|_| AccountError::Hashing)?;
        }
        Ok(Self { jobs })
    }

    /// Runs `work` on the next free hashing thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(work());
            }))
            .map_err(|_| AccountError::Hashing)?;
        answered.await.map_err(|_| AccountError::Hashing)
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

    #[tokio::test]
    async fn the_hashing_threads_outlive_a_panic_and_take_a_burst() -> Result<(), AccountError> {
        let hashers = Hashers::start(2)?;
        let panicked = hashers.run(|| -> u32 { panic!("a hash that fails") }).await;
        assert!(matches!(panicked, Err(AccountError::Hashing)));
        let burst = (0..16u32).map(|n| hashers.run(move || n * 2));
        let answers = futures::future::try_join_all(burst).await?;
        assert_eq!(answers, (0..16).map(|n| n * 2).collect::<Vec<_>>());
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
