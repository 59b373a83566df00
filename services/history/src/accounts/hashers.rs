//! The threads that hash passwords, and the memory argon2 works in: one thread per core,
//! each with a queue of its own, so a burst of logins cannot starve the runtime; each
//! hashes in memory it keeps while busy and gives back to the system once idle.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use argon2::{Argon2, Block};

use super::error::AccountError;

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
pub(super) const KEEP_MEMORY_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

thread_local! {
    /// Argon2's working memory, one per hashing thread, kept while the thread is busy:
    /// made once per burst, not per hash for glibc to keep in an arena, as argon2's own
    /// per-hash allocation was (a burst of logins left ~100 MiB behind). Given back
    /// whole after [`KEEP_MEMORY_IDLE`] without a hash, to the system (it is always a
    /// mapping of its own: [`ALWAYS_MAPPED_BLOCKS`]).
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Argon2 of `password` and `salt` into `output`, in this thread's [`MEMORY`].
pub(super) fn argon2(
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
/// [`Passwords`](super::passwords::Passwords) holding the queues is dropped.
#[derive(Clone)]
pub(super) struct Hashers {
    threads: Arc<[Hasher]>,
}

/// One hashing thread's queue and how many jobs it has not finished.
struct Hasher {
    jobs: mpsc::Sender<Job>,
    pending: Arc<AtomicUsize>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Hashers {
    pub(super) fn start(
        threads: usize,
        keep_memory_idle: std::time::Duration,
    ) -> Result<Self, AccountError> {
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
    pub(super) async fn run<T: Send + 'static>(
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
    use argon2::Params;
    use secrecy::SecretString;

    use super::*;
    use crate::accounts::passwords::hash;

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
}
