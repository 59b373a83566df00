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
/// a socket). Another process may take it meanwhile: a server that cannot bind it must
/// fail loudly, and its launcher try another.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
