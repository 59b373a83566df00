//! What the tests and the benchmark run against: real Redis and MySQL, isolated per
//! test; a real HTTP server speaking OpenAI's Chat Completions wire format; and the one
//! launcher that starts the whole stack, as tasks of the test's runtime or as separate
//! processes.
//!
//! Production crates depend on this crate only as a dev-dependency.
//!
//! Where the servers are comes from `TEST_REDIS_ADDR` (default `redis://127.0.0.1:6379`)
//! and `TEST_MYSQL_URL` (default `mysql://chat:chat@127.0.0.1:3306`, a user allowed to
//! create databases). `deploy/dev/deps.sh up` starts both natively.

pub mod accounts;
pub mod history;
mod mysql;
pub mod openai;
mod own_mariadb;
mod own_redis;
mod redis;
pub mod signal;
pub mod stack;

pub use mysql::{TestDatabase, mysql_server_url};
pub use openai::{FakeOpenAi, FixedReply, Marks, Upstream};
pub use own_mariadb::OwnMariadb;
pub use own_redis::OwnRedis;
pub use redis::{TestRedis, redis_addr};

/// Runs an async clean-up from `Drop`, on a thread of its own so it works whether or
/// not the test's runtime is still alive.
fn clean_up_in_background<F, Fut>(work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(work())
    })
    .join();
    if let Ok(Err(error)) = joined {
        tracing::warn!(%error, "test clean-up failed");
    }
}

/// A loopback port free now, for a server to bind later (one that takes an address, not
/// a socket). Another process may take it meanwhile, so it is drawn at random from below
/// the kernel's ephemeral range: the ports outgoing connections (to Redis, to MySQL, of
/// every parallel test) are given come from that range, and one of them landing on a port
/// handed out here, between the check and the server's bind, failed whole test runs. A
/// server that still cannot bind must fail loudly, and its launcher try again. A port is
/// handed out once per process: two draws landing on the same free port gave two servers
/// of one stack the same port (one bench run failed so: the second gateway could not bind,
/// and the first answered in its place).
pub fn free_port() -> anyhow::Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Distinct draws within one process, whatever the random state repeats.
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    /// Every port handed out so far.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FROM: u16 = 15000;
    if ephemeral_from > FROM + 1000 {
        let span = u64::from(ephemeral_from - FROM);
        for _ in 0..64 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
            hasher.write_u32(std::process::id());
            let port = FROM + u16::try_from(hasher.finish() % span)?;
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    for _ in 0..64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found that was not handed out already")
}

#[cfg(test)]
mod tests {
    /// However the random draws fall, one process never gets the same port twice.
    #[test]
    fn a_port_is_handed_out_once() -> anyhow::Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let port = super::free_port()?;
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        Ok(())
    }
}
