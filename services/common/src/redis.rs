//! Redis connection pools with short timeouts, so a Redis outage answers promptly
//! instead of queueing callers.
//!
//! Our own pool manager rather than deadpool-redis's: that one sends `UNWATCH` and `PING`
//! to Redis every time a pooled connection is handed out, a round trip before every
//! command, which doubled the Redis traffic of every service (a third of the history
//! service's CPU was Redis I/O in a profile). Here a connection in steady use is handed
//! out as it is. It is checked with a `PING` first only when it sat idle for
//! [`CHECK_AFTER_IDLE`], or when a command on any connection of the pool failed as only a
//! dropped connection fails (an I/O error, or one the client library says needs a
//! reconnect) since it was last checked: after Redis restarts, the first failure makes
//! every other connection prove itself before it is used. A connection that failed so
//! itself is never handed out again. Nothing here uses `WATCH`, so no transaction state
//! outlives a use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, QueueMode, RecycleError, RecycleResult, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Client, RedisError};

/// Accepts the original's `host:port` form as well as a `redis://` URL.
pub fn redis_url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}")
    }
}

/// A pool that gives up after `timeout` when Redis cannot be reached or is saturated.
pub fn pool(addr: &str, max_size: usize, timeout: Duration) -> anyhow::Result<Pool> {
    let manager = Manager {
        client: Client::open(redis_url(addr))?,
        drops: Arc::default(),
    };
    Ok(Pool::builder(manager)
        .max_size(max_size)
        // The most recently used first: connections in use stay warm, the rest idle out
        // and are checked before they serve again.
        .queue_mode(QueueMode::Lifo)
        .timeouts(Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        })
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// How long a connection may sit unused before it is checked with a `PING` when handed
/// out again.
pub const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Opens connections, and recycles them without a round trip while all is well.
pub struct Manager {
    client: Client,
    /// Commands of this pool that failed as on a dropped connection, ever.
    drops: Arc<AtomicU64>,
}

/// A connection, whether a command on it failed as a dropped connection fails, and the
/// pool's count of such failures when it was last known good.
pub struct Link {
    connection: MultiplexedConnection,
    broken: AtomicBool,
    drops: Arc<AtomicU64>,
    drops_when_checked: u64,
}

impl managed::Manager for Manager {
    type Type = Link;
    type Error = RedisError;

    async fn create(&self) -> Result<Link, RedisError> {
        let drops_when_checked = self.drops.load(Ordering::Relaxed);
        let connection = self.client.get_multiplexed_async_connection().await?;
        Ok(Link {
            connection,
            broken: AtomicBool::new(false),
            drops: self.drops.clone(),
            drops_when_checked,
        })
    }

    async fn recycle(&self, link: &mut Link, metrics: &Metrics) -> RecycleResult<RedisError> {
        if link.broken.load(Ordering::Relaxed) {
            return Err(RecycleError::message("the connection was dropped"));
        }
        let drops = self.drops.load(Ordering::Relaxed);
        if drops == link.drops_when_checked && metrics.last_used() < CHECK_AFTER_IDLE {
            return Ok(());
        }
        let _: String = redis::cmd("PING").query_async(&mut link.connection).await?;
        link.drops_when_checked = drops;
        Ok(())
    }
}

pub type Pool = managed::Pool<Manager, Connection>;
pub type PoolError = managed::PoolError<RedisError>;
pub type BuildError = managed::BuildError;

/// A pooled connection: a command runs on it as on the connection itself, and it goes
/// back to the pool when dropped.
pub struct Connection {
    object: managed::Object<Manager>,
}

impl From<managed::Object<Manager>> for Connection {
    fn from(object: managed::Object<Manager>) -> Self {
        Self { object }
    }
}

impl AsRef<Link> for Connection {
    fn as_ref(&self) -> &Link {
        &self.object
    }
}

impl Link {
    /// A command on this connection failed as on a dropped one: it goes, and the pool's
    /// other connections are checked before they serve again.
    fn dropped(&self) {
        self.broken.store(true, Ordering::Relaxed);
        self.drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether `error` is how a command on a dropped connection fails.
fn dropped(error: &RedisError) -> bool {
    error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        let link = &mut *self.object;
        Box::pin(async move {
            let answer = link.connection.req_packed_command(cmd).await;
            if answer.as_ref().is_err_and(dropped) {
                link.dropped();
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        let link = &mut *self.object;
        Box::pin(async move {
            let answer = link
                .connection
                .req_packed_commands(cmd, offset, count)
                .await;
            if answer.as_ref().is_err_and(dropped) {
                link.dropped();
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.object.connection.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_address_forms() {
        assert_eq!(redis_url("localhost:6379"), "redis://localhost:6379");
        assert_eq!(redis_url("redis://r:6379/2"), "redis://r:6379/2");
    }
}
