//! Versioned schema migrations, applied at start. Safe to run from many replicas at
//! once (a named lock serialises them) and again on an up-to-date schema.
//!
//! Every change lives in its `.sql` file under `deploy/mysql/migrations`, written to
//! run on MySQL 8 and MariaDB 10.11 and to be a no-op where its change is already
//! made. Each file goes to the server whole, as one multi-statement query, so the
//! server's own parser splits it, comments and quoted semicolons included.
//!
//! Why our own runner rather than a migration crate: the one maintained crate that
//! drives `mysql_async`, refinery, takes no lock between replicas (we would wrap it in
//! this one anyway), wants `V1__name.sql` file names and keeps its own history table,
//! so every database already migrated would run everything again (0002 rebuilds the
//! whole table), and it enables mysql_async's C zlib backend and needs a newer Rust
//! than this workspace's `rust-version`. What is left here is a lock, a table of
//! applied versions and a loop.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_chat_history",
        sql: include_str!("../../../deploy/mysql/migrations/0001_create_chat_history.sql"),
    },
    Migration {
        version: 2,
        name: "upgrade_original_table",
        sql: include_str!("../../../deploy/mysql/migrations/0002_upgrade_original_table.sql"),
    },
    Migration {
        version: 3,
        name: "incomplete_replies",
        sql: include_str!("../../../deploy/mysql/migrations/0003_incomplete_replies.sql"),
    },
    Migration {
        version: 4,
        name: "accounts",
        sql: include_str!("../../../deploy/mysql/migrations/0004_accounts.sql"),
    },
    Migration {
        version: 5,
        name: "exact_user_ids",
        sql: include_str!("../../../deploy/mysql/migrations/0005_exact_user_ids.sql"),
    },
    Migration {
        version: 6,
        name: "conversations",
        sql: include_str!("../../../deploy/mysql/migrations/0006_conversations.sql"),
    },
    Migration {
        version: 7,
        name: "keyword_index",
        sql: include_str!("../../../deploy/mysql/migrations/0007_keyword_index.sql"),
    },
    Migration {
        version: 8,
        name: "save_keys",
        sql: include_str!("../../../deploy/mysql/migrations/0008_save_keys.sql"),
    },
    Migration {
        version: 9,
        name: "keyword_terms",
        sql: include_str!("../../../deploy/mysql/migrations/0009_keyword_terms.sql"),
    },
];

const LOCK: &str = "chat_history_migrations";

/// Applies every migration the database has not seen; returns how many ran.
pub async fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut connection = pool.get_conn().await?;
    // Reset on its way back to the pool: no lock left on it (see `mysql_pool`).
    connection.reset_connection(true);
    let locked: Option<i64> = connection
        .exec_first("SELECT GET_LOCK(?, 60)", (LOCK,))
        .await?;
    anyhow::ensure!(
        locked == Some(1),
        "could not take the migration lock in 60 s"
    );
    let applied = apply_pending(&mut connection).await;
    let released: Result<Option<i64>, _> = connection
        .exec_first("SELECT RELEASE_LOCK(?)", (LOCK,))
        .await;
    // A failed migration is the news; a lock that could not be released after it is not.
    let ran = applied?;
    released?;
    Ok(ran)
}

async fn apply_pending(connection: &mut Conn) -> anyhow::Result<usize> {
    connection
        .query_drop(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
               version INT NOT NULL PRIMARY KEY,
               name VARCHAR(255) NOT NULL,
               applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        )
        .await?;
    let done: Vec<u32> = connection
        .query("SELECT version FROM schema_migrations")
        .await?;
    let mut ran = 0;
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        connection
            .query_drop(migration.sql)
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "migration {} ({}) failed: {error}",
                    migration.version,
                    migration.name
                )
            })?;
        connection
            .exec_drop(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                (migration.version, migration.name),
            )
            .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        ran += 1;
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_version_order() {
        assert!(
            MIGRATIONS
                .windows(2)
                .all(|pair| pair[0].version < pair[1].version)
        );
    }
}
