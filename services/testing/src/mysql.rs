//! A MySQL database of the test's own on the shared test server.

use mysql_async::prelude::Queryable;

pub fn mysql_server_url() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://chat:chat@127.0.0.1:3306".to_owned())
}

/// A database of its own on the test MySQL server, dropped with this value.
pub struct TestDatabase {
    /// `mysql://...` URL of the new database, for `MYSQL_DSN`.
    pub url: String,
    name: String,
}

impl TestDatabase {
    pub async fn new() -> anyhow::Result<Self> {
        let server = mysql_server_url();
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&server)?);
        let mut connection = pool.get_conn().await.map_err(|error| {
            anyhow::anyhow!(
                "cannot reach the test MySQL server ({error}); run `deploy/dev/deps.sh up`"
            )
        })?;
        connection
            .query_drop(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            ))
            .await?;
        drop(connection);
        pool.disconnect().await?;
        Ok(Self {
            url: format!("{}/{name}", server.trim_end_matches('/')),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        crate::clean_up_in_background(move || async move {
            let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(&mysql_server_url())?);
            let mut connection = pool.get_conn().await?;
            // The test's services may have been stopped in the middle of a transaction,
            // whose connection then holds a lock DROP DATABASE waits for (forever, while
            // this thread holds up the test's runtime): end those connections first, and
            // never wait long for a lock.
            let stragglers: Vec<u64> = connection
                .exec(
                    "SELECT id FROM information_schema.processlist \
                     WHERE db = ? AND id <> CONNECTION_ID()",
                    (&name,),
                )
                .await?;
            for id in stragglers {
                // Gone already is fine.
                let _ = connection.query_drop(format!("KILL {id}")).await;
            }
            connection
                .query_drop("SET SESSION lock_wait_timeout = 30")
                .await?;
            connection
                .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                .await?;
            drop(connection);
            pool.disconnect().await?;
            Ok(())
        });
    }
}
