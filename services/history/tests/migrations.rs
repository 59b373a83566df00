//! The migrations against a real MySQL-protocol server: each conditional step both
//! ways, and several replicas starting at once. (Upgrading the original service's
//! table with data in it is in `history.rs`.)

use chat_testing::TestDatabase;
use mysql_async::Pool;
use mysql_async::prelude::Queryable;

mod support;

const INDEX: &str = "idx_chat_history_user_id_id";

fn pool(db: &TestDatabase) -> anyhow::Result<Pool> {
    Ok(Pool::new(chat_history::mysql_opts(&db.url)?))
}

/// How many migrations there are: one `.sql` file each.
fn all() -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/mysql/migrations");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "sql"))
                .count()
        })
        .unwrap_or(0)
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
        [0, 0, all()],
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
    assert_eq!(chat_history::migrate(&pool).await?, all());
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
    assert_eq!(chat_history::migrate(&pool).await?, all());
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

/// The original service's table, with several users' messages in it, ends up with one
/// conversation per user holding exactly their messages, in order, counted.
#[tokio::test]
async fn the_original_table_becomes_one_conversation_per_user() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pool = pool(&db)?;
    let mut connection = support::original_table_with(
        &pool,
        "INSERT INTO chat_history (user_id, role, text) VALUES
           ('u1', 'user', 'hello'), ('u1', 'assistant', 'hi there'),
           ('u2', 'user', 'bonjour'), ('u1', 'user', 'again')",
    )
    .await?;
    chat_history::migrate(&pool).await?;
    let conversations: Vec<(String, String, String, i64)> = connection
        .query("SELECT id, user_id, title, message_count FROM conversations ORDER BY user_id")
        .await?;
    assert_eq!(conversations.len(), 2, "{conversations:?}");
    for ((id, user, title, count), (expected_user, expected_count)) in
        conversations.iter().zip([("u1", 3), ("u2", 1)])
    {
        assert_eq!((user.as_str(), *count), (expected_user, expected_count));
        assert_eq!(title, "Earlier messages");
        assert_eq!(id.len(), 36, "{id}");
        let texts: Vec<String> = connection
            .exec(
                "SELECT text FROM chat_history WHERE conversation_id = ? ORDER BY id",
                (id,),
            )
            .await?;
        let expected: &[&str] = match expected_user {
            "u1" => &["hello", "hi there", "again"],
            _ => &["bonjour"],
        };
        assert_eq!(texts, expected);
    }
    let nullable: Option<String> = connection
        .query_first(
            "SELECT is_nullable FROM information_schema.columns
             WHERE table_schema = DATABASE() AND table_name = 'chat_history'
               AND column_name = 'conversation_id'",
        )
        .await?;
    assert_eq!(nullable.as_deref(), Some("NO"), "every message has one");
    // Run again as after a failure part way: nothing doubles.
    connection
        .query_drop(include_str!(
            "../../../deploy/mysql/migrations/0006_conversations.sql"
        ))
        .await?;
    let again: Option<i64> = connection
        .query_first("SELECT COUNT(*) FROM conversations")
        .await?;
    assert_eq!(again, Some(2));
    drop(connection);
    pool.disconnect().await?;
    Ok(())
}

/// `EXPLAIN` of the queries behind the sidebar and a conversation's pages: each reads
/// an index range of one user (type `ref` or `range`, the index named), never the table.
#[tokio::test]
#[allow(
    clippy::print_stdout,
    reason = "the plans are shown with --no-capture, for the record"
)]
async fn listing_conversations_and_their_messages_are_index_lookups() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let pool = pool(&db)?;
    chat_history::migrate(&pool).await?;
    let mut connection = pool.get_conn().await?;
    // Users with several conversations each, as in use: reading one user's rows would
    // read every conversation of theirs, the conversation's index only its own.
    for user in 0..20 {
        for conversation in 0..5 {
            let id = format!("00000000-0000-4000-8000-{user:06}{conversation:06}");
            connection
                .exec_drop(
                    "INSERT INTO conversations (id, user_id, title) VALUES (?, ?, 't')",
                    (&id, format!("user{user}")),
                )
                .await?;
            let rows = ["(?, ?, 'user', 'text')"; 10].join(", ");
            let params: Vec<mysql_async::Value> = (0..10)
                .flat_map(|_| [format!("user{user}").into(), id.clone().into()])
                .collect();
            connection
                .exec_drop(
                    format!(
                        "INSERT INTO chat_history (user_id, conversation_id, role, text) VALUES {rows}"
                    ),
                    params,
                )
                .await?;
        }
    }
    connection
        .query_drop("ANALYZE TABLE conversations, chat_history")
        .await?;
    let cases = [
        (
            "SELECT id, title FROM conversations WHERE user_id = 'user7'
             ORDER BY updated_at DESC, id DESC LIMIT 21",
            "idx_conversations_user_id_updated_at_id",
        ),
        (
            "SELECT id, title FROM conversations WHERE user_id = 'user7'
               AND (updated_at < FROM_UNIXTIME(1700000000123 / 1000)
                    OR (updated_at = FROM_UNIXTIME(1700000000123 / 1000)
                        AND id < '00000000-0000-4000-8000-000007000003'))
             ORDER BY updated_at DESC, id DESC LIMIT 21",
            "idx_conversations_user_id_updated_at_id",
        ),
        (
            "SELECT id, role, text FROM chat_history
             WHERE user_id = 'user7' AND conversation_id = '00000000-0000-4000-8000-000007000003'
               AND id > 0 ORDER BY id LIMIT 51",
            "idx_chat_history_user_id_conversation_id_id",
        ),
        (
            "SELECT id, role, text FROM chat_history
             WHERE user_id = 'user7' AND conversation_id = '00000000-0000-4000-8000-000007000003'
             ORDER BY id DESC LIMIT 40",
            "idx_chat_history_user_id_conversation_id_id",
        ),
    ];
    for (query, index) in cases {
        let plan: Vec<mysql_async::Row> = connection.query(format!("EXPLAIN {query}")).await?;
        let shown: Vec<String> = plan
            .iter()
            .map(|row| {
                [
                    "table",
                    "type",
                    "possible_keys",
                    "key",
                    "key_len",
                    "ref",
                    "rows",
                    "Extra",
                ]
                .iter()
                .map(|column| {
                    let value: Option<String> = row.get(*column).unwrap_or_default();
                    format!("{column}={}", value.unwrap_or_else(|| "NULL".to_owned()))
                })
                .collect::<Vec<_>>()
                .join(" ")
            })
            .collect();
        println!("EXPLAIN {query}\n  {}", shown.join("\n  "));
        assert_eq!(plan.len(), 1, "{shown:?}");
        let access: Option<String> = plan[0].get("type");
        let key: Option<String> = plan[0].get("key");
        assert!(
            matches!(access.as_deref(), Some("ref" | "range")),
            "{query}: {shown:?}"
        );
        assert_eq!(key.as_deref(), Some(index), "{query}: {shown:?}");
        let extra: Option<String> = plan[0].get("Extra");
        assert!(
            !extra.as_deref().unwrap_or_default().contains("filesort"),
            "{query}: sorted by the index, not afterwards: {shown:?}"
        );
    }
    drop(connection);
    pool.disconnect().await?;
    Ok(())
}
