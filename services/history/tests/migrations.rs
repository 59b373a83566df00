//! The migrations against a real MySQL-protocol server: each conditional step both
//! ways, and several replicas starting at once. (Upgrading the original service's
//! table with data in it is in `history.rs`.)

use chat_testing::TestDatabase;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;

const INDEX: &str = "idx_chat_history_user_id_id";

fn pool(db: &TestDatabase) -> anyhow::Result<Pool> {
    Ok(Pool::new(chat_history::mysql_opts(&db.url)?))
}

/// Whether `chat_history` has the index, and the `incomplete` column.
async fn index_and_column(pool: &Pool) -> anyhow::Result<(bool, bool)> {
    let mut connection = pool.get_conn().await?;
    let indexes: Option<i64> = connection
        .exec_first(
            "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics
             WHERE table_schema = DATABASE() AND table_name = 'chat_history'
               AND index_name = ?",
            (INDEX,),
        )
        .await?;
    let columns: Option<i64> = connection
        .query_first(
            "SELECT COUNT(*) FROM information_schema.columns
             WHERE table_schema = DATABASE() AND table_name = 'chat_history'
               AND column_name = 'incomplete'",
        )
        .await?;
    Ok((indexes == Some(1), columns == Some(1)))
}

#[tokio::test]
async fn several_replicas_starting_at_once_apply_each_migration_once() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pools = (0..3)
        .map(|_| pool(&db))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ran = futures::future::try_join_all(pools.iter().map(chat_history::migrate)).await?;
    ran.sort_unstable();
    assert_eq!(
        ran,
        [0, 0, 5],
        "one replica migrates, the others find it done"
    );
    assert_eq!(index_and_column(&pools[0]).await?, (true, true));
    for pool in pools {
        pool.disconnect().await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_original_table_gains_the_index_and_the_column() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pool = pool(&db)?;
    pool.get_conn()
        .await?
        .query_drop(include_str!("fixtures/original_table.sql"))
        .await?;
    assert_eq!(index_and_column(&pool).await?, (false, false));
    assert_eq!(chat_history::migrate(&pool).await?, 5);
    assert_eq!(index_and_column(&pool).await?, (true, true));
    pool.disconnect().await?;
    Ok(())
}

#[tokio::test]
async fn changes_already_made_by_hand_are_skipped() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pool = pool(&db)?;
    // Today's shape, made without the migrations (by hand, or by a restored dump).
    pool.get_conn()
        .await?
        .query_drop(format!(
            "CREATE TABLE chat_history (
               id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
               user_id VARCHAR(64) NOT NULL,
               role ENUM('user','assistant') NOT NULL,
               text MEDIUMTEXT NOT NULL,
               created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
               incomplete BOOLEAN NOT NULL DEFAULT FALSE,
               KEY {INDEX} (user_id, id)
             ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
        ))
        .await?;
    assert_eq!(chat_history::migrate(&pool).await?, 5);
    assert_eq!(index_and_column(&pool).await?, (true, true));
    assert_eq!(chat_history::migrate(&pool).await?, 0);
    pool.disconnect().await?;
    Ok(())
}

/// The runner sends each file whole; a failure past its first statement must still
/// fail the migration, or it would be recorded as applied.
#[tokio::test]
async fn a_failure_late_in_a_file_fails_the_whole_file() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pool = pool(&db)?;
    let mut connection = pool.get_conn().await?;
    let outcome = connection
        .query_drop(
            "CREATE TABLE first_step (id INT);\nSELECT 1;\nALTER TABLE no_such_table ADD COLUMN x INT;\nCREATE TABLE never_made (id INT);",
        )
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    let made: Vec<String> = connection
        .query(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = DATABASE() ORDER BY table_name",
        )
        .await?;
    assert_eq!(made, ["first_step"]);
    drop(connection);
    pool.disconnect().await?;
    Ok(())
}
