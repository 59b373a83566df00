//! Writing: a batch of saved messages analysed into terms, then each message's row,
//! its postings and its user's totals written in one transaction.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Params, Transaction, TxOpts, Value};

use super::{Index, Saved};
use crate::error::KeywordError;
use crate::metrics;

/// Characters of a message analysed: enough for every term that matters.
const MAX_ANALYSED_CHARS: usize = 20_000;
/// Postings in one INSERT.
const POSTINGS_PER_INSERT: usize = 500;

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
                let mut totals: HashMap<&str, (i64, i64)> = HashMap::new();
                let mut postings: Vec<Value> = Vec::new();
                let mut indexed = 0;
                for (message, counts) in &analysed {
                    if insert_doc(&mut tx, message, counts, &mut totals, &mut postings).await? {
                        indexed += 1;
                    }
                }
                insert_postings(&mut tx, &postings).await?;
                add_totals(&mut tx, totals).await?;
                tx.commit().await?;
                Ok(indexed)
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

/// Inserts one message's row unless it is indexed already; when it went in, adds its
/// postings and its part of its user's totals, and answers true.
async fn insert_doc<'a>(
    tx: &mut Transaction<'_>,
    message: &'a Saved,
    counts: &HashMap<String, u32>,
    totals: &mut HashMap<&'a str, (i64, i64)>,
    postings: &mut Vec<Value>,
) -> Result<bool, mysql_async::Error> {
    let length: i64 = counts.values().map(|count| i64::from(*count)).sum();
    tx.exec_drop(
        "INSERT IGNORE INTO keyword_docs (message_id, user_id, terms) VALUES (?, ?, ?)",
        (message.id, &message.user_id, length),
    )
    .await?;
    if tx.affected_rows() == 0 {
        return Ok(false);
    }
    let total = totals.entry(message.user_id.as_str()).or_default();
    total.0 += 1;
    total.1 += length;
    for (term, count) in counts {
        postings.extend([
            message.user_id.as_str().into(),
            term.as_str().into(),
            message.id.into(),
            (*count).into(),
        ]);
    }
    Ok(true)
}

/// Inserts `postings` (four values a row), [`POSTINGS_PER_INSERT`] rows at a time.
async fn insert_postings(
    tx: &mut Transaction<'_>,
    postings: &[Value],
) -> Result<(), mysql_async::Error> {
    for chunk in postings.chunks(POSTINGS_PER_INSERT * 4) {
        let rows = vec!["(?, ?, ?, ?)"; chunk.len() / 4].join(", ");
        tx.exec_drop(
            format!(
                "INSERT IGNORE INTO keyword_postings (user_id, term, message_id, tf) VALUES {rows}"
            ),
            Params::Positional(chunk.to_vec()),
        )
        .await?;
    }
    Ok(())
}

/// Adds each user's new documents and terms to their totals.
async fn add_totals(
    tx: &mut Transaction<'_>,
    totals: HashMap<&str, (i64, i64)>,
) -> Result<(), mysql_async::Error> {
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
