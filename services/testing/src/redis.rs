//! A Redis key prefix of the test's own on the shared test server.

use std::time::Duration;

pub fn redis_addr() -> String {
    std::env::var("TEST_REDIS_ADDR").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test uses; its keys are deleted when it is dropped.
pub struct TestRedis {
    pub addr: String,
    pub prefix: String,
}

impl TestRedis {
    pub async fn new() -> anyhow::Result<Self> {
        let addr = redis_addr();
        let pool = chat_common::redis::pool(&addr, 1, Duration::from_secs(2))?;
        let mut connection = pool.get().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the test Redis at {addr} ({error}); run `deploy/dev/deps.sh up`"
            )
        })?;
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(Self {
            addr,
            prefix: format!("test:{}:", uuid::Uuid::new_v4().simple()),
        })
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let addr = self.addr.clone();
        let pattern = format!("{}*", self.prefix);
        crate::clean_up_in_background(move || async move {
            let pool = chat_common::redis::pool(&addr, 1, Duration::from_secs(2))?;
            let mut connection = pool.get().await?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let _: i64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await?;
            }
            Ok(())
        });
    }
}
