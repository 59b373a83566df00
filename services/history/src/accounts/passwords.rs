//! Password hashes: argon2id with the crate's default parameters (19 MiB, 2 passes),
//! stored as PHC strings, so the parameters can change later without breaking old
//! hashes. Hashing takes tens of milliseconds of CPU and 19 MiB: it runs on threads of
//! its own, one per core, so a burst of logins cannot starve the runtime, each hashing in
//! memory it keeps, so the process holds 19 MiB per core for it and no more. (Hashed on
//! tokio's blocking pool in memory argon2 allocated per hash, glibc kept the freed blocks
//! in the arena of every thread that had hashed: the bench's setup, 128 users made,
//! left the process at 150–177 MiB; now 55.) A thread that has hashed nothing for
//! [`KEEP_MEMORY_IDLE`] gives its memory back, so an idle process holds none of it.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::password_hash::{self, CustomizedPasswordHasher, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
fn hash(password: &SecretString) -> Result<String, AccountError> {
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
/// [`MEMORY`]: the traits' own salts, PHC parsing and constant-time check (verifying
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

/// Most memory a stored hash may ask for (the default asks for 19 MiB): a hash with more
/// is refused rather than allowed to grow the process.
const MAX_MEMORY_BLOCKS: usize = 256 * 1024;

/// Blocks reserved (1 KiB each) for a thread's memory, at least: more than glibc's largest
/// dynamic mmap threshold (32 MiB), so the memory is always its own mapping, given back to
/// the system whole when freed. At 19 MiB, the first block freed raised glibc's threshold
/// above its size, and every later one came from the thread's arena, where freeing it
/// gave nothing back. Only the blocks used are ever touched, so only they are resident.
const ALWAYS_MAPPED_BLOCKS: usize = 33 * 1024;

/// How long a hashing thread keeps its memory with no hash to do.
/// Long enough to span a burst of logins or of users made, short enough that memory used
/// at a service's start (it hashes a decoy) or for one login is soon back.
const KEEP_MEMORY_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

thread_local! {
    /// Argon2's working memory, one per hashing thread, kept while the thread is busy:
    /// made once per burst, not per hash for glibc to keep in an arena, as argon2's own
    /// per-hash allocation was (a burst of logins left ~100 MiB behind). Given back
    /// whole after [`KEEP_MEMORY_IDLE`] without a hash (19 MiB is far above glibc's mmap
    /// threshold, so it goes back to the system).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` into `output`, in this thread's [`MEMORY`].
fn argon2(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks = argon2.params().block_count();
    if blocks > MAX_MEMORY_BLOCKS {
        return Err(argon2::Error::MemoryTooMuch);
    }
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            *memory = Vec::with_capacity(blocks.max(ALWAYS_MAPPED_BLOCKS));
            memory.resize(blocks, Block::default());
        }
        let hashed = argon2.hash_password_into_with_memory(password, salt, output, &mut memory[..]);
        // As argon2 does with its own: nothing derived from a password stays behind.
        memory[..blocks].fill(Block::default());
        hashed
    })
}

/// The threads that hash, each with a queue of its own; a job goes to the thread with
/// the fewest waiting. (One queue shared behind a mutex made the threads wait for it in
/// turn: the one holding it waited for a job, the others for the mutex, so each gave
/// its memory back only after the one before it had: 30 s apart.) They end when the last
/// [`Passwords`] holding the queues is dropped.
#[derive(Clone)]
struct Hashers {
    threads: Arc<[Hasher]>,
}

/// One hashing thread's queue and how many jobs it has not finished.
struct Hasher {
    jobs: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Hashers {
    fn start(threads: usize, keep_memory_idle: std::time::Duration) -> Result<Self, AccountError> {
        let threads = (0..threads.max(1))
            .map(|n| {
                let (jobs, queue) = mpsc::channel::<Job>();
                let pending = Arc::new(AtomicUsize::new(0));
                std::thread::Builder::new()
                    .name(format!("argon2-{n}"))
                    .spawn(move || {
                        loop {
                            match queue.recv_timeout(keep_memory_idle) {
                                // Jobs catch their own panics (`Hasher::run`).
                                Ok(job) => job(),
                                // Zeroed after its last use already.
                                Err(mpsc::RecvTimeoutError::Timeout) => {
                                    MEMORY.with_borrow_mut(|memory| *memory = Vec::new());
                                }
                                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                            }
                        }
                    })
                    .map_err(|_| AccountError::Hashing)?;
                Ok(Hasher { jobs, pending })
            })
            .collect::<Result<_, AccountError>>()?;
        Ok(Self { threads })
    }

    /// Runs `work` on the hashing thread with the fewest jobs waiting (the first of
    /// equals, so lone hashes keep to one thread's memory).
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let hasher = self
            .threads
            .iter()
            .min_by_key(|hasher| hasher.pending.load(Ordering::Relaxed))
            .ok_or(AccountError::Hashing)?;
        hasher.run(work).await
    }
}

impl Hasher {
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AccountError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let pending = self.pending.clone();
        pending.fetch_add(1, Ordering::Relaxed);
        let job = Box::new(move || {
            // Counted done before answering, so the caller's next job sees it.
            let done = std::panic::catch_unwind(AssertUnwindSafe(work));
            pending.fetch_sub(1, Ordering::Relaxed);
            // A panicking job answers nothing: its caller sees the dropped answer.
            if let Ok(value) = done {
                let _ = answer.send(value);
            }
        });
        if self.jobs.send(job).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(AccountError::Hashing);
        }
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

    #[tokio::test]
    async fn the_hashing_threads_outlive_a_panic_and_take_a_burst() -> Result<(), AccountError> {
        let hashers = Hashers::start(2, KEEP_MEMORY_IDLE)?;
        let panicked = hashers.run(|| -> u32 { panic!("a hash that fails") }).await;
        assert!(matches!(panicked, Err(AccountError::Hashing)));
        let burst = (0..16u32).map(|n| hashers.run(move || n * 2));
        let answers = futures::future::try_join_all(burst).await?;
        assert_eq!(answers, (0..16).map(|n| n * 2).collect::<Vec<_>>());
        Ok(())
    }

    /// Each hashing thread keeps argon2's memory between hashes, and gives it back once it
    /// has had nothing to hash for a while, on its own clock.
    #[tokio::test]
    async fn idle_hashing_threads_give_their_memory_back() -> Result<(), AccountError> {
        let idle = std::time::Duration::from_millis(300);
        let hashers = Hashers::start(2, idle)?;
        let kept = || MEMORY.with_borrow(Vec::len);
        let blocks = Params::default().block_count();
        async fn hash_on(hasher: &Hasher) -> Result<String, AccountError> {
            let password = SecretString::from("correct horse battery");
            hasher.run(move || hash(&password)).await?
        }
        let (first, second) = (&hashers.threads[0], &hashers.threads[1]);
        let (one, other) = tokio::join!(hash_on(first), hash_on(second));
        one?;
        other?;
        assert_eq!(first.run(kept).await?, blocks, "kept between hashes");
        assert_eq!(second.run(kept).await?, blocks, "kept between hashes");
        tokio::time::sleep(idle * 3).await;
        assert_eq!(first.run(kept).await?, 0, "given back when idle");
        assert_eq!(second.run(kept).await?, 0, "given back when idle");
        Ok(())
    }

    /// Jobs go where fewest wait: a burst is shared, a lone job goes to the first thread.
    #[tokio::test]
    async fn jobs_go_to_the_least_busy_thread() -> Result<(), AccountError> {
        let hashers = Hashers::start(2, KEEP_MEMORY_IDLE)?;
        let name = || std::thread::current().name().map(str::to_owned);
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = hashers.run(move || released.recv().is_ok());
        let other = async {
            // The first job holds its thread until the second has answered.
            let answer = hashers.run(name).await;
            let _ = release.send(());
            answer
        };
        let (busy, other) = tokio::join!(busy, other);
        assert!(busy?);
        assert_eq!(other?.as_deref(), Some("argon2-1"));
        assert_eq!(hashers.run(name).await?.as_deref(), Some("argon2-0"));
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
