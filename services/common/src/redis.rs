//! Redis connection pools with short timeouts, so a Redis outage answers promptly
//! instead of queueing callers.

use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

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
    let mut config = Config::from_url(redis_url(addr));
    config.pool = Some(PoolConfig {
        max_size,
        timeouts: Timeouts {
            wait: Some(timeout),
            create: Some(timeout),
            recycle: Some(timeout),
        },
        ..PoolConfig::default()
    });
    Ok(config.create_pool(Some(Runtime::Tokio1))?)
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
