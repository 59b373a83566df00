//! Writing: a batch of saved messages analysed into terms, then each message's row,
//! its postings, its terms' message counts and its user's totals written in one
//! transaction.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, TxOpts, Value};

use super::{Index, Saved};
use crate::error::KeywordError;
use crate::metrics;

/// Characters of a message analysed: enough for every term that matters.
const MAX_ANALYSED_CHARS: usize = 20_000;
/// Rows in one INSERT.
const ROWS_PER_INSERT: usize = 500;

/// A saved message and the count of each of its terms.
type Analysed = (Saved, HashMap<String, u32>);

impl Index {
    /// Writes the index rows of `saved` in one transaction; returns how many were new.
    pub(super) async fn write(&self, saved: Vec<Saved>) -> Result<usize, KeywordError> {
        if saved.is_empty() {
            return Ok(0);
        }
        let analysed = self.analyse(saved).await?;
        let indexed = self
            .with_conn("insert", async |conn| {
                let mut tx = conn.start_transaction(TxOpts::default()).await?;
                let mut new = Vec::new();
                for message in &analysed {
                    if insert_doc(&mut tx, message).await? {
                        new.push(message);
                    }
                }
                insert_postings(&mut tx, &new).await?;
                add_term_docs(&mut tx, &new).await?;
                add_totals(&mut tx, &new).await?;
                tx.commit().await?;
                Ok(new.len())
            })
            .await?;
        metrics::indexed(indexed);
        Ok(indexed)
    }

    /// Each message's term counts. Analysis is CPU work: off the async threads.
    async fn analyse(&self, saved: Vec<Saved>) -> Result<Vec<Analysed>, KeywordError> {
        let analyzer = self.analyzer.clone();
        tokio::task::spawn_blocking(move || {
            saved
                .into_iter()
                .map(|message| {
                    let text: String = message.text.chars().take(MAX_ANALYSED_CHARS).collect();
                    let counts = analyzer.term_counts(&text);
                    (message, counts)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|error| KeywordError::Analysis(error.to_string()))
    }
}

/// Inserts one message's row unless it is indexed already; answers whether it went in.
async fn insert_doc(
    tx: &mut Transaction<'_>,
    (message, counts): &Analysed,
) -> Result<bool, mysql_async::Error> {
    tx.exec_drop(
        "INSERT IGNORE INTO keyword_docs (message_id, user_id, terms) VALUES (?, ?, ?)",
        (message.id, &message.user_id, length(counts)),
    )
    .await?;
    Ok(tx.affected_rows() == 1)
}

/// A message's length in terms, BM25's document length.
fn length(counts: &HashMap<String, u32>) -> i64 {
    counts.values().map(|count| i64::from(*count)).sum()
}

/// Inserts the postings of the `new` messages, [`ROWS_PER_INSERT`] rows at a time.
async fn insert_postings(
    tx: &mut Transaction<'_>,
    new: &[&Analysed],
) -> Result<(), mysql_async::Error> {
    let mut postings: Vec<Value> = Vec::new();
    for (message, counts) in new {
        for (term, count) in counts {
            postings.extend([
                message.user_id.as_str().into(),
                term.as_str().into(),
                message.id.into(),
                (*count).into(),
            ]);
        }
    }
    insert_rows(
        tx,
        "INSERT IGNORE INTO keyword_postings (user_id, term, message_id, tf) VALUES",
        "(?, ?, ?, ?)",
        "",
        &postings,
    )
    .await
}

/// Adds one to each term's count of messages, per user, for the `new` messages.
async fn add_term_docs(
    tx: &mut Transaction<'_>,
    new: &[&Analysed],
) -> Result<(), mysql_async::Error> {
    let mut docs: HashMap<(&str, &str), i64> = HashMap::new();
    for (message, counts) in new {
        for term in counts.keys() {
            *docs.entry((&message.user_id, term)).or_default() += 1;
        }
    }
    let rows: Vec<Value> = docs
        .into_iter()
        .flat_map(|((user_id, term), docs)| [user_id.into(), term.into(), docs.into()])
        .collect();
    // VALUES() in the update: MySQL 8 warns it is deprecated, but its replacement (a row
    // alias) is not MariaDB's syntax.
    insert_rows(
        tx,
        "INSERT INTO keyword_terms (user_id, term, docs) VALUES",
        "(?, ?, ?)",
        " ON DUPLICATE KEY UPDATE docs = docs + VALUES(docs)",
        &rows,
    )
    .await
}

/// Inserts `values` as rows of `row`'s placeholders, [`ROWS_PER_INSERT`] rows a statement.
async fn insert_rows(
    tx: &mut Transaction<'_>,
    insert: &str,
    row: &str,
    tail: &str,
    values: &[Value],
) -> Result<(), mysql_async::Error> {
    let width = row.matches('?').count();
    for chunk in values.chunks(ROWS_PER_INSERT * width) {
        let rows = vec![row; chunk.len() / width].join(", ");
        tx.exec_drop(
            format!("{insert} {rows}{tail}"),
            Params::Positional(chunk.to_vec()),
        )
        .await?;
    }
    Ok(())
}

/// Adds each user's new documents and terms to their totals.
async fn add_totals(tx: &mut Transaction<'_>, new: &[&Analysed]) -> Result<(), mysql_async::Error> {
    let mut totals: HashMap<&str, (i64, i64)> = HashMap::new();
    for (message, counts) in new {
        let total = totals.entry(message.user_id.as_str()).or_default();
        total.0 += 1;
        total.1 += length(counts);
    }
    for (user_id, (docs, terms)) in totals {
        tx.exec_drop(
            "INSERT INTO keyword_users (user_id, docs, total_terms) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE docs = docs + ?, total_terms = total_terms + ?",
            (user_id, docs, terms, docs, terms),
        )
        .await?;
    }
    Ok(())
}
