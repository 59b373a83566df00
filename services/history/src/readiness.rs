//! What makes the history service ready: it can keep a save. MySQL takes saves, and
//! while MySQL is away the outbox in Redis does, so the service is ready while either
//! answers; only with both down would a save be lost, and only then is it unready
//! (taking it out of the Service then would not help the saves). Each is pinged on a
//! connection of its own, so pools busy with requests do not make a dependency look down.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, PoolConstraints, PoolOpts};
use secrecy::ExposeSecret;

use crate::Settings;

/// One round of the readiness check.
type Round = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// How long one ping may take.
const PING_TIMEOUT: Duration = Duration::from_millis(1000);

/// A pool of one connection for pinging the MySQL of `dsn`.
pub fn mysql_ping_pool(dsn: &secrecy::SecretString) -> anyhow::Result<Pool> {
    let opts = crate::mysql_opts(dsn.expose_secret())?;
    let constraints =
        PoolConstraints::new(0, 1).ok_or_else(|| anyhow::anyhow!("invalid MySQL pool size"))?;
    Ok(Pool::new(
        mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(PoolOpts::default().with_constraints(constraints)),
    ))
}

/// Pings the MySQL behind `pool` within a second; what failed otherwise.
pub async fn mysql_ping(pool: &Pool) -> Result<(), String> {
    let ping = async {
        let mut connection = pool.get_conn().await?;
        connection.ping().await
    };
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("mysql: {error}")),
        Err(_) => Err(format!(
            "mysql: no answer within {} ms",
            PING_TIMEOUT.as_millis()
        )),
    }
}

/// The readiness check of the history service.
pub(crate) fn check(settings: &Settings) -> anyhow::Result<impl Fn() -> Round + Send + 'static> {
    let mysql = mysql_ping_pool(&settings.mysql_dsn)?;
    let redis = chat_common::redis::pool(&settings.redis_addr, 1, PING_TIMEOUT)?;
    Ok(move || {
        let (mysql, redis) = (mysql.clone(), redis.clone());
        Box::pin(async move {
            let (mysql, redis) = tokio::join!(
                mysql_ping(&mysql),
                chat_common::readiness::redis_ping(&redis)
            );
            match (mysql, redis) {
                (Ok(()), Ok(())) => Ok(()),
                (Err(down), Ok(())) => {
                    tracing::debug!(%down, "mysql down: saves go to the outbox");
                    Ok(())
                }
                (Ok(()), Err(down)) => {
                    tracing::debug!(%down, "redis down: no cache, no outbox");
                    Ok(())
                }
                (Err(mysql), Err(redis)) => Err(format!("{mysql}; {redis}")),
            }
        }) as Round
    })
}
