//! Search: one user's saved messages ranked by BM25 over the index's terms.
//!
//! Reads the user's totals (documents, terms), the newest postings of each of the
//! query's terms (one index range each, on the user-first primary key), scores in memory, then reads the
//! best messages from `chat_history` by id and user: a message deleted since it was
//! indexed is simply not there, and another user's never could be.

use std::collections::{HashMap, HashSet};

use chat_common::user::validate_user_id;
use chat_proto::{Role, SearchHit, SearchRequest, TextRange};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Value};

use crate::error::KeywordError;
use crate::index::Index;
use crate::metrics;
use crate::terms::highlights;

/// BM25's term-frequency saturation and length normalisation.
const K1: f64 = 1.2;
const B: f64 = 0.75;
const DEFAULT_LIMIT: u32 = 10;
const MAX_LIMIT: u32 = 50;
/// Query terms used at most.
const MAX_QUERY_TERMS: usize = 16;
/// Postings read at most per query term, newest first: bounds the cost of common terms
/// (a search reads at most this many times `MAX_QUERY_TERMS` rows).
const POSTINGS_PER_TERM: u32 = 50;
const MAX_QUERY_CHARS: usize = 2000;

/// The score of each candidate message, best first.
pub fn rank(
    documents: i64,
    total_terms: i64,
    postings: &[(String, i64, i64, i64)],
) -> Vec<(i64, f64)> {
    let documents = documents.max(1) as f64;
    let average = (total_terms.max(1) as f64 / documents).max(1.0);
    let mut frequency: HashMap<&str, f64> = HashMap::new();
    for (term, ..) in postings {
        *frequency.entry(term.as_str()).or_default() += 1.0;
    }
    let mut scores: HashMap<i64, f64> = HashMap::new();
    for (term, message_id, tf, length) in postings {
        let df = frequency[term.as_str()];
        let idf = (1.0 + (documents - df + 0.5) / (df + 0.5)).ln();
        let tf = *tf as f64;
        let norm = K1 * (1.0 - B + B * (*length as f64) / average);
        *scores.entry(*message_id).or_default() += idf * tf * (K1 + 1.0) / (tf + norm);
    }
    let mut ranked: Vec<(i64, f64)> = scores.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked
}

/// A message read back from `chat_history`, with the score that found it.
struct Found {
    id: i64,
    conversation_id: String,
    role: String,
    text: String,
    created_at_unix_ms: i64,
    score: f64,
}

impl Index {
    pub async fn search(&self, request: &SearchRequest) -> Result<Vec<SearchHit>, KeywordError> {
        let (terms, limit) = self.checked_query(request)?;
        let user_id = request.user_id.as_str();
        let exclude: HashSet<i64> = request.exclude_ids.iter().copied().collect();
        let rows = self
            .with_conn("select", async |conn| {
                find(conn, user_id, &terms, &exclude, limit).await
            })
            .await?;
        let conversation = &request.conversation_id;
        let mut hits: Vec<SearchHit> = rows
            .into_iter()
            .filter(|row| conversation.is_empty() || row.conversation_id == *conversation)
            .map(|row| hit_of(row, &terms))
            .collect();
        hits.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.message_id.cmp(&a.message_id))
        });
        hits.truncate(limit);
        metrics::search_hits(hits.len());
        Ok(hits)
    }

    /// The request's query terms and the number of hits to answer, or why there are none.
    fn checked_query(&self, request: &SearchRequest) -> Result<(Vec<String>, usize), KeywordError> {
        validate_user_id(&request.user_id)?;
        if request.query.chars().count() > MAX_QUERY_CHARS {
            return Err(KeywordError::TooLong(MAX_QUERY_CHARS));
        }
        let terms = self.analyzer.query_terms(&request.query, MAX_QUERY_TERMS);
        if terms.is_empty() {
            return Err(KeywordError::EmptyQuery);
        }
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            limit => limit.min(MAX_LIMIT),
        } as usize;
        Ok((terms, limit))
    }
}

/// The best `limit * 2` of the user's messages for `terms`, but those in `exclude`,
/// read back with their scores.
async fn find(
    conn: &mut Conn,
    user_id: &str,
    terms: &[String],
    exclude: &HashSet<i64>,
    limit: usize,
) -> Result<Vec<Found>, mysql_async::Error> {
    let totals: Option<(i64, i64)> = conn
        .exec_first(
            "SELECT docs, total_terms FROM keyword_users WHERE user_id = ?",
            (user_id,),
        )
        .await?;
    let Some((documents, total_terms)) = totals else {
        return Ok(Vec::new());
    };
    let postings = read_postings(conn, user_id, terms).await?;
    let ranked: Vec<(i64, f64)> = rank(documents, total_terms, &postings)
        .into_iter()
        .filter(|(id, _)| !exclude.contains(id))
        .take(limit * 2)
        .collect();
    if ranked.is_empty() {
        return Ok(Vec::new());
    }
    read_messages(conn, user_id, &ranked).await
}

/// The postings of `terms` in the user's messages, with each message's length.
async fn read_postings(
    conn: &mut Conn,
    user_id: &str,
    terms: &[String],
) -> Result<Vec<(String, i64, i64, i64)>, mysql_async::Error> {
    // Each term's newest postings, one backward index range each: a term in more
    // messages than that counts as in that many (it tells little apart anyway), and a
    // rare one, the kind that finds a fact, is exact.
    let per_term = format!(
        "(SELECT term, message_id, tf FROM keyword_postings \
         WHERE user_id = ? AND term = ? ORDER BY message_id DESC LIMIT {POSTINGS_PER_TERM})"
    );
    let union = vec![per_term.as_str(); terms.len()].join(" UNION ALL ");
    let mut params: Vec<Value> = Vec::new();
    for term in terms {
        params.extend([Value::from(user_id), Value::from(term.as_str())]);
    }
    conn.exec(
        format!(
            "SELECT c.term, c.message_id, c.tf, d.terms FROM ({union}) AS c \
             JOIN keyword_docs d ON d.message_id = c.message_id"
        ),
        Params::Positional(params),
    )
    .await
}

/// The ranked messages still in the user's history, with their scores.
async fn read_messages(
    conn: &mut Conn,
    user_id: &str,
    ranked: &[(i64, f64)],
) -> Result<Vec<Found>, mysql_async::Error> {
    let scores: HashMap<i64, f64> = ranked.iter().copied().collect();
    let marks = vec!["?"; ranked.len()].join(", ");
    let mut params: Vec<Value> = vec![user_id.into()];
    params.extend(ranked.iter().map(|(id, _)| Value::from(*id)));
    conn.exec_map(
        format!(
            "SELECT id, conversation_id, CAST(role AS CHAR), text, \
             CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED) \
             FROM chat_history WHERE user_id = ? AND id IN ({marks})"
        ),
        Params::Positional(params),
        |(id, conversation_id, role, text, created_at_unix_ms)| Found {
            score: scores.get(&id).copied().unwrap_or_default(),
            id,
            conversation_id,
            role,
            text,
            created_at_unix_ms,
        },
    )
    .await
}

fn hit_of(row: Found, terms: &[String]) -> SearchHit {
    SearchHit {
        message_id: row.id,
        conversation_id: row.conversation_id,
        role: if row.role == "assistant" {
            Role::Assistant
        } else {
            Role::User
        }
        .into(),
        highlights: highlights(&row.text, terms)
            .into_iter()
            .map(|(start, end)| TextRange { start, end })
            .collect(),
        text: row.text,
        created_at_unix_ms: row.created_at_unix_ms,
        score: row.score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posting(term: &str, message: i64, tf: i64, length: i64) -> (String, i64, i64, i64) {
        (term.to_owned(), message, tf, length)
    }

    #[test]
    fn rarer_terms_and_more_matches_rank_higher() {
        // 100 messages; "biscuit" in one, "dog" in ten.
        let postings = [
            posting("biscuit", 1, 1, 5),
            posting("dog", 1, 1, 5),
            posting("dog", 2, 1, 5),
            posting("dog", 3, 3, 5),
        ];
        let ranked = rank(100, 500, &postings);
        assert_eq!(ranked[0].0, 1, "{ranked:?}");
        assert!(ranked[1].0 == 3 && ranked[2].0 == 2, "{ranked:?}");
    }

    #[test]
    fn longer_messages_weigh_a_match_less() {
        let postings = [posting("cat", 1, 1, 50), posting("cat", 2, 1, 5)];
        let ranked = rank(10, 100, &postings);
        assert_eq!(ranked[0].0, 2);
        assert!(ranked[0].1 > ranked[1].1);
    }
}
