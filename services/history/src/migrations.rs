//! Versioned schema migrations, applied at start. Safe to run from many replicas at
//! once (a named lock serialises them) and again on an up-to-date schema.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};

struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
    /// Indexes to add when missing, as (table, index, columns): MySQL 8 has no
    /// `CREATE INDEX IF NOT EXISTS`.
    indexes: &'static [(&'static str, &'static str, &'static str)],
    /// Columns to add when missing, as (table, column, definition).
    columns: &'static [(&'static str, &'static str, &'static str)],
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_chat_history",
        sql: include_str!("../../../deploy/mysql/migrations/0001_create_chat_history.sql"),
        indexes: &[],
        columns: &[],
    },
    Migration {
        version: 2,
        name: "upgrade_original_table",
        sql: include_str!("../../../deploy/mysql/migrations/0002_upgrade_original_table.sql"),
        indexes: &[("chat_history", "idx_chat_history_user_id_id", "user_id, id")],
        columns: &[],
    },
    Migration {
        version: 3,
        name: "incomplete_replies",
        sql: include_str!("../../../deploy/mysql/migrations/0003_incomplete_replies.sql"),
        indexes: &[],
        columns: &[(
            "chat_history",
            "incomplete",
            "BOOLEAN NOT NULL DEFAULT FALSE",
        )],
    },
];

const LOCK: &str = "chat_history_migrations";

/// Applies every migration the database has not seen; returns how many ran.
pub async fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut connection = pool.get_conn().await?;
    let locked: Option<i64> = connection
        .exec_first("SELECT GET_LOCK(?, 60)", (LOCK,))
        .await?;
    anyhow::ensure!(
        locked == Some(1),
        "could not take the migration lock in 60 s"
    );
    let applied = apply_pending(&mut connection).await;
    let _: Option<i64> = connection
        .exec_first("SELECT RELEASE_LOCK(?)", (LOCK,))
        .await?;
    applied
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
        for statement in statements(migration.sql) {
            connection.query_drop(statement).await.map_err(|error| {
                anyhow::anyhow!(
                    "migration {} ({}) failed: {error}",
                    migration.version,
                    migration.name
                )
            })?;
        }
        // MySQL 8 has neither ADD COLUMN IF NOT EXISTS nor CREATE INDEX IF NOT EXISTS:
        // look in the catalogue first.
        for (table, column, definition) in migration.columns {
            let missing = !exists(connection, "columns", "column_name", table, column).await?;
            if missing {
                let sql = format!("ALTER TABLE {table} ADD COLUMN {column} {definition}");
                connection.query_drop(sql).await?;
            }
        }
        for (table, index, columns) in migration.indexes {
            if !exists(connection, "statistics", "index_name", table, index).await? {
                let sql = format!("CREATE INDEX {index} ON {table} ({columns})");
                connection.query_drop(sql).await?;
            }
        }
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

/// Whether `information_schema.<view>` lists `name` (in `name_column`) for `table`.
async fn exists(
    connection: &mut Conn,
    view: &str,
    name_column: &str,
    table: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let sql = format!(
        "SELECT COUNT(*) FROM information_schema.{view}
         WHERE table_schema = DATABASE() AND table_name = ? AND {name_column} = ?"
    );
    let count: Option<i64> = connection.exec_first(sql, (table, name)).await?;
    Ok(count.unwrap_or(0) > 0)
}

/// Splits a migration file into statements: `;` at the end of a line ends one, and
/// `--` comment lines are dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            statements.push(current.trim().trim_end_matches(';').to_owned());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_owned());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_splits_into_statements() {
        assert_eq!(statements(MIGRATIONS[0].sql).len(), 1);
        assert_eq!(statements(MIGRATIONS[1].sql).len(), 2);
        assert_eq!(statements(MIGRATIONS[2].sql).len(), 1);
        assert!(
            MIGRATIONS
                .windows(2)
                .all(|pair| pair[0].version < pair[1].version)
        );
        assert_eq!(
            statements("-- c\nSELECT 1;\nSELECT\n 2;"),
            ["SELECT 1", "SELECT\n 2"]
        );
    }
}
