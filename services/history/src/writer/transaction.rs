//! One transaction of saves: each save's rows found if an earlier save under its
//! request id committed them, its conversation counted and checked, and the rows of
//! every save that is left in one multi-row INSERT; then each save's answer.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Pool, TxOpts, Value};

use super::{Committed, Save, Saved, role_name};
use crate::cache::CachedMessage;
use crate::error::HistoryError;

/// One transaction for `saves`: each answers its saved rows, or that its conversation
/// is gone. `Err` when the transaction itself failed. With `find_earlier`, the rows an
/// earlier save under the same request id committed are answered, not inserted again.
pub(crate) async fn write(
    pool: &Pool,
    timeout: Duration,
    saves: &[&Save],
    find_earlier: bool,
) -> Result<Vec<Saved>, HistoryError> {
    let written = tokio::time::timeout(timeout, transact(pool, saves, find_earlier))
        .await
        .map_err(|_| HistoryError::WriteTimedOut)?
        .map_err(HistoryError::Mysql)?;
    let first_id = first_new_id(saves, &written)?;
    Ok(answers(saves, written, first_id))
}

/// What the transaction of [`write`] did.
struct Written {
    /// For each save, the rows an earlier save under its request id had committed.
    earlier: Vec<Option<Vec<CachedMessage>>>,
    /// The conversations not found.
    missing: Missing,
    /// The id of the first row inserted, if any was.
    first_id: Option<u64>,
}

impl Written {
    /// Whether this transaction inserted the save's rows.
    fn inserted(&self, save: &Save, earlier: &Option<Vec<CachedMessage>>) -> bool {
        earlier.is_none() && !is_missing(&self.missing, save)
    }
}

/// Counts the saves not committed before into their conversations, inserts those whose
/// conversation is there, and commits.
async fn transact(
    pool: &Pool,
    saves: &[&Save],
    find_earlier: bool,
) -> Result<Written, mysql_async::Error> {
    let mut connection = pool.get_conn().await?;
    let mut transaction = connection.start_transaction(TxOpts::default()).await?;
    let earlier = if find_earlier {
        find_committed(&mut transaction, saves).await?
    } else {
        vec![None; saves.len()]
    };
    let new: Vec<&Save> = saves
        .iter()
        .zip(&earlier)
        .filter(|(_, earlier)| earlier.is_none())
        .map(|(save, _)| *save)
        .collect();
    let missing = touch_conversations(&mut transaction, &new).await?;
    let kept: Vec<&Save> = new
        .iter()
        .copied()
        .filter(|save| !is_missing(&missing, save))
        .collect();
    let first_id = if kept.is_empty() {
        None
    } else {
        let (sql, params) = insert_statement(&kept);
        transaction.exec_drop(sql, params).await?;
        transaction.last_insert_id()
    };
    transaction.commit().await?;
    Ok(Written {
        earlier,
        missing,
        first_id,
    })
}

/// The id of the first row inserted (0 when none was), or `NoInsertId` when rows were
/// inserted but MySQL did not say their id.
fn first_new_id(saves: &[&Save], written: &Written) -> Result<i64, HistoryError> {
    match written.first_id {
        Some(id) => Ok(id as i64),
        None if saves
            .iter()
            .zip(&written.earlier)
            .any(|(save, earlier)| written.inserted(save, earlier)) =>
        {
            Err(HistoryError::NoInsertId)
        }
        None => Ok(0),
    }
}

/// Each save's answer: the rows committed before, its conversation gone, or its rows
/// under the ids from `first_id` on.
fn answers(saves: &[&Save], written: Written, first_id: i64) -> Vec<Saved> {
    // One multi-row INSERT gets consecutive ids ("simple insert" in InnoDB's terms).
    let mut next_id = first_id;
    saves
        .iter()
        .zip(written.earlier)
        .map(|(save, earlier)| {
            if let Some(messages) = earlier {
                return Ok(Committed {
                    messages,
                    fresh: false,
                });
            }
            if is_missing(&written.missing, save) {
                return Err(HistoryError::ConversationNotFound);
            }
            let messages = save
                .rows
                .iter()
                .map(|(role, text, incomplete)| {
                    let id = next_id;
                    next_id += 1;
                    CachedMessage {
                        id,
                        role: role_name(*role).to_owned(),
                        text: text.clone(),
                        created_at_unix_ms: save.created_at_ms,
                        incomplete: *incomplete,
                    }
                })
                .collect();
            Ok(Committed {
                messages,
                fresh: true,
            })
        })
        .collect()
}

/// For each save, the rows an earlier save under its request id committed, if any.
async fn find_committed(
    transaction: &mut mysql_async::Transaction<'_>,
    saves: &[&Save],
) -> Result<Vec<Option<Vec<CachedMessage>>>, mysql_async::Error> {
    let mut found = Vec::with_capacity(saves.len());
    for save in saves {
        let keys: Vec<String> = (0..save.rows.len())
            .filter_map(|place| save.key(place))
            .collect();
        if keys.is_empty() {
            found.push(None);
            continue;
        }
        let placeholders = vec!["?"; keys.len()].join(", ");
        let sql = format!(
            "SELECT save_key, id, role, text, CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED), incomplete
             FROM chat_history WHERE user_id = ? AND save_key IN ({placeholders})"
        );
        let mut params: Vec<Value> = vec![save.user_id.as_str().into()];
        params.extend(keys.iter().map(|key| Value::from(key.as_str())));
        let rows: Vec<(String, i64, String, String, i64, bool)> =
            transaction.exec(sql, params).await?;
        if rows.is_empty() {
            found.push(None);
            continue;
        }
        // In the save's order, whatever order MySQL answered in.
        let messages = keys
            .iter()
            .filter_map(|key| rows.iter().find(|row| row.0 == *key))
            .map(
                |(_, id, role, text, created_at_unix_ms, incomplete)| CachedMessage {
                    id: *id,
                    role: role.clone(),
                    text: text.clone(),
                    created_at_unix_ms: *created_at_unix_ms,
                    incomplete: *incomplete,
                },
            )
            .collect();
        found.push(Some(messages));
    }
    Ok(found)
}

/// Conversations not found, each with the user who named it.
type Missing = Vec<(String, String)>;

fn is_missing(missing: &Missing, save: &Save) -> bool {
    missing
        .iter()
        .any(|(id, user_id)| *id == save.conversation_id && *user_id == save.user_id)
}

/// Counts the new messages into their conversations, in id order (so two batches lock
/// them in the same order), and answers the conversations that are not there, or not
/// their user's.
async fn touch_conversations(
    transaction: &mut mysql_async::Transaction<'_>,
    saves: &[&Save],
) -> Result<Missing, mysql_async::Error> {
    let mut conversations: Vec<(&str, &str, usize, &str, i64)> = Vec::new();
    for save in saves {
        match conversations
            .iter_mut()
            .find(|(id, user, ..)| *id == save.conversation_id && *user == save.user_id)
        {
            Some((_, _, count, title, last_ms)) => {
                *count += save.rows.len();
                if title.is_empty() {
                    *title = &save.title;
                }
                *last_ms = (*last_ms).max(save.created_at_ms);
            }
            None => conversations.push((
                &save.conversation_id,
                &save.user_id,
                save.rows.len(),
                &save.title,
                save.created_at_ms,
            )),
        }
    }
    conversations.sort_unstable_by_key(|(id, ..)| *id);
    let mut missing = Vec::new();
    for (id, user_id, count, title, now_ms) in conversations {
        transaction
            .exec_drop(
                "UPDATE conversations
                 SET message_count = message_count + ?,
                     updated_at = GREATEST(updated_at, FROM_UNIXTIME(? / 1000)),
                     title = IF(title = '', ?, title)
                 WHERE id = ? AND user_id = ?",
                (count as u64, now_ms, title, id, user_id),
            )
            .await?;
        // The count always changes, so a row found is a row affected.
        if transaction.affected_rows() == 0 {
            missing.push((id.to_owned(), user_id.to_owned()));
        }
    }
    Ok(missing)
}

/// One INSERT for every row of `saves`, in order.
fn insert_statement(saves: &[&Save]) -> (String, Vec<Value>) {
    let rows: usize = saves.iter().map(|save| save.rows.len()).sum();
    let placeholders = vec!["(?, ?, ?, ?, FROM_UNIXTIME(? / 1000), ?, ?)"; rows].join(", ");
    let sql = format!(
        "INSERT INTO chat_history (user_id, conversation_id, role, text, created_at, incomplete, save_key) VALUES {placeholders}"
    );
    let mut params = Vec::with_capacity(rows * 7);
    for save in saves {
        for (place, (role, text, incomplete)) in save.rows.iter().enumerate() {
            params.push(Value::from(save.user_id.as_str()));
            params.push(Value::from(save.conversation_id.as_str()));
            params.push(Value::from(role_name(*role)));
            params.push(Value::from(text.as_str()));
            params.push(Value::from(save.created_at_ms));
            params.push(Value::from(*incomplete));
            params.push(Value::from(save.key(place)));
        }
    }
    (sql, params)
}
