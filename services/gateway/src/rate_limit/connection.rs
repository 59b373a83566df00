//! The limiter's one Redis connection.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// One multiplexed connection to Redis shared by every check (no pool to wait for under
/// load), made again after a failure.
#[derive(Clone)]
pub(super) struct Redis {
    client: redis::Client,
    connection: Arc<std::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl Redis {
    pub(super) fn new(addr: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(chat_common::redis::redis_url(addr))?,
            connection: Arc::default(),
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let kept = self.slot().clone();
        if let Some(connection) = kept {
            return Ok(connection);
        }
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|error| error.to_string())?;
        *self.slot() = Some(connection.clone());
        Ok(connection)
    }

    /// Drops the connection after a failure: the next check connects afresh.
    pub(super) fn forget(&self) {
        *self.slot() = None;
    }

    pub(super) async fn ping(&self, timeout: Duration) -> bool {
        let ping = async {
            let mut connection = self.connection().await.ok()?;
            let pong = redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await;
            if pong.is_err() {
                self.forget();
            }
            pong.ok()
        };
        matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(_)))
    }
}
