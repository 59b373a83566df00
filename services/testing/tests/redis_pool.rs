//! The services' Redis pool (`chat_common::redis`) against a real Redis that restarts: a
//! connection the restart dropped is replaced, not handed out again and again.

use std::time::Duration;

use chat_common::redis::Pool;
use chat_testing::OwnRedis;

async fn ping(pool: &Pool) -> anyhow::Result<String> {
    let mut connection = pool.get().await?;
    Ok(redis::cmd("PING").query_async(&mut connection).await?)
}

#[tokio::test]
async fn a_connection_dropped_by_a_restart_is_replaced() -> anyhow::Result<()> {
    let mut redis = OwnRedis::start().await?;
    let pool = chat_common::redis::pool(&redis.addr(), 1, Duration::from_secs(2))?;
    assert_eq!(ping(&pool).await?, "PONG");
    assert_eq!(ping(&pool).await?, "PONG", "the same connection, reused");

    redis.stop().await?;
    redis.resume().await?;
    // The one pooled connection died with the server: at most one command fails on it,
    // then the pool opens a new one.
    let after: Vec<bool> = [
        ping(&pool).await.is_ok(),
        ping(&pool).await.is_ok(),
        ping(&pool).await.is_ok(),
    ]
    .into();
    assert!(after[1] && after[2], "{after:?}");
    assert_eq!(pool.status().size, 1);
    Ok(())
}
