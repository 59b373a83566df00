//! Search: one user's saved messages ranked by BM25 over the index's terms.
//!
//! Reads the user's totals (documents, terms) with the number of the user's messages
//! holding each query term (two primary-key lookups, one round trip); then, if any term
//! is worth reading, the newest postings of those terms (one index range each, on the
//! user-first primary key); scores in memory; then reads the best messages from
//! `chat_history` by id and user: a message deleted since it was indexed is simply not
//! there, and another user's never could be. A query whose terms are all common or
//! unknown costs the first lookup only.

use std::collections::{HashMap, HashSet};

use chat_common::user::validate_user_id;
use chat_proto::{Role, SearchHit, SearchRequest, TextRange};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

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
/// Messages a user needs before a term in half of them or more counts as common: in a
/// short history every word is in half the messages.
const COMMON_AFTER_DOCS: i64 = 10;

/// What the index knows of one user before reading any posting.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages indexed.
    pub documents: i64,
    /// Terms in them, repeats included.
    pub total_terms: i64,
    /// Messages holding each term (of the query).
    pub docs: HashMap<String, i64>,
}

impl Stats {
    /// The query terms worth reading postings for: those in some message of the user's,
    /// less, with `skip_common`, those in half of them or more (BM25 gives such a term
    /// ln 2 of weight or less, a rare one several times that; MySQL's natural-language
    /// full-text search drops them alike: "present in 50% or more of the rows").
    pub fn terms_to_read<'a>(&self, terms: &'a [String], skip_common: bool) -> Vec<&'a String> {
        terms
            .iter()
            .filter(|term| {
                let docs = self.docs.get(*term).copied().unwrap_or(0);
                docs > 0
                    && !(skip_common
                        && self.documents >= COMMON_AFTER_DOCS
                        && docs * 2 >= self.documents)
            })
            .collect()
    }
}

/// The score of each candidate message, best first, from its `postings` (term,
/// message, count of the term in it, its length).
pub fn rank(stats: &Stats, postings: &[Posting]) -> Vec<(i64, f64)> {
    let documents = stats.documents.max(1) as f64;
    let average = (stats.total_terms.max(1) as f64 / documents).max(1.0);
    let mut scores: HashMap<i64, f64> = HashMap::new();
    for (term, message_id, tf, length) in postings {
        let df = stats.docs.get(term).copied().unwrap_or(1).max(1) as f64;
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
        let skip_common = request.skip_common_terms;
        let rows = self
            .with_conn("select", async |conn| {
                find(conn, user_id, &terms, skip_common, &exclude, limit).await
            })
            .await?;
        let conversation = &request.conversation_id;
        let mut rows: Vec<Found> = rows
            .into_iter()
            .filter(|row| conversation.is_empty() || row.conversation_id == *conversation)
            .collect();
        rows.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.id.cmp(&a.id)));
        rows.truncate(limit);
        // Highlights for the hits returned only, and only when someone will see them.
        let highlighted = (!request.without_highlights).then_some(terms.as_slice());
        let hits: Vec<SearchHit> = rows
            .into_iter()
            .map(|row| hit_of(row, highlighted))
            .collect();
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
/// read back with their scores: the statistics, then (if a term is worth reading) the
/// postings, then the messages.
async fn find(
    conn: &mut Conn,
    user_id: &str,
    terms: &[String],
    skip_common: bool,
    exclude: &HashSet<i64>,
    limit: usize,
) -> Result<Vec<Found>, mysql_async::Error> {
    let stats = stats(conn, user_id, terms).await?;
    let read = stats.terms_to_read(terms, skip_common);
    if read.is_empty() {
        return Ok(Vec::new());
    }
    let postings = postings(conn, user_id, &read).await?;
    let ranked: Vec<(i64, f64)> = rank(&stats, &postings)
        .into_iter()
        .filter(|(id, _)| !exclude.contains(id))
        .take(limit * 2)
        .collect();
    if ranked.is_empty() {
        return Ok(Vec::new());
    }
    read_messages(conn, user_id, &ranked).await
}

/// A posting: the term, the message, the term's count in it, the message's length.
pub type Posting = (String, i64, i64, i64);

/// The user's totals and how many of the user's messages hold each of `terms` (none
/// listed for a term the user never wrote, all zero for a user with nothing indexed):
/// two primary-key lookups in one statement. (Deciding here which terms are common,
/// rather than in the postings' SQL, keeps that SQL simple: a `NOT EXISTS` per term cost
/// MariaDB about a millisecond of planning even when it read no row.)
async fn stats(
    conn: &mut Conn,
    user_id: &str,
    terms: &[String],
) -> Result<Stats, mysql_async::Error> {
    let user = literal(user_id);
    let quoted: Vec<String> = terms.iter().map(|term| literal(term)).collect();
    let sql = format!(
        "(SELECT NULL, docs, total_terms FROM keyword_users WHERE user_id = {user}) \
         UNION ALL (SELECT term, docs, 0 FROM keyword_terms \
         WHERE user_id = {user} AND term IN ({}))",
        quoted.join(", ")
    );
    let rows: Vec<(Option<String>, i64, i64)> = conn.query(sql).await?;
    let mut stats = Stats::default();
    for (term, docs, total_terms) in rows {
        match term {
            None => (stats.documents, stats.total_terms) = (docs, total_terms),
            Some(term) => {
                stats.docs.insert(term, docs);
            }
        }
    }
    Ok(stats)
}

/// Each of `terms`' newest postings for the user, in one round trip: one backward index
/// range each (a common term's older messages are left out, it tells little apart
/// anyway, and a rare one, the kind that finds a fact, is read whole), with each
/// message's length.
async fn postings(
    conn: &mut Conn,
    user_id: &str,
    terms: &[&String],
) -> Result<Vec<Posting>, mysql_async::Error> {
    let user = literal(user_id);
    let sql = terms
        .iter()
        .map(|term| {
            format!(
                "(SELECT c.term, c.message_id, c.tf, d.terms FROM \
                 (SELECT term, message_id, tf FROM keyword_postings \
                 WHERE user_id = {user} AND term = {} \
                 ORDER BY message_id DESC LIMIT {POSTINGS_PER_TERM}) AS c \
                 JOIN keyword_docs d ON d.message_id = c.message_id)",
                literal(term)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    conn.query(sql).await
}

/// The ranked messages still in the user's history, with their scores.
async fn read_messages(
    conn: &mut Conn,
    user_id: &str,
    ranked: &[(i64, f64)],
) -> Result<Vec<Found>, mysql_async::Error> {
    let scores: HashMap<i64, f64> = ranked.iter().copied().collect();
    let ids = ranked
        .iter()
        .map(|(id, _)| id.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    conn.query_map(
        format!(
            "SELECT id, conversation_id, CAST(role AS CHAR), text, \
             CAST(UNIX_TIMESTAMP(created_at) * 1000 AS SIGNED) \
             FROM chat_history WHERE user_id = {} AND id IN ({ids})",
            literal(user_id)
        ),
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

/// `text` as a SQL string literal in hex (`_utf8mb4 X'…'`): nothing in it can end the
/// literal, whatever the server's SQL mode. A search's SQL varies with its terms, so it
/// goes as text in one round trip rather than as a statement prepared, run and closed
/// (two, and the keyword pool resets its connections, so nothing prepared is reused).
/// The column's collation applies to the comparison, so its index serves it.
fn literal(text: &str) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(12 + 2 * text.len());
    sql.push_str("_utf8mb4 X'");
    for byte in text.bytes() {
        let _ = write!(sql, "{byte:02X}");
    }
    sql.push('\'');
    sql
}

fn hit_of(row: Found, highlighted: Option<&[String]>) -> SearchHit {
    SearchHit {
        message_id: row.id,
        conversation_id: row.conversation_id,
        role: if row.role == "assistant" {
            Role::Assistant
        } else {
            Role::User
        }
        .into(),
        highlights: highlighted
            .map(|terms| highlights(&row.text, terms))
            .unwrap_or_default()
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

    fn stats(documents: i64, total_terms: i64, docs: &[(&str, i64)]) -> Stats {
        Stats {
            documents,
            total_terms,
            docs: docs
                .iter()
                .map(|(term, docs)| ((*term).to_owned(), *docs))
                .collect(),
        }
    }

    #[test]
    fn literals_are_hex_whatever_they_hold() {
        assert_eq!(literal("ab'\\"), "_utf8mb4 X'6162275C'");
        assert_eq!(literal(""), "_utf8mb4 X''");
        assert_eq!(literal("猫"), "_utf8mb4 X'E78CAB'");
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
        let ranked = rank(&stats(100, 500, &[("biscuit", 1), ("dog", 10)]), &postings);
        assert_eq!(ranked[0].0, 1, "{ranked:?}");
        assert!(ranked[1].0 == 3 && ranked[2].0 == 2, "{ranked:?}");
    }

    #[test]
    fn longer_messages_weigh_a_match_less() {
        let postings = [posting("cat", 1, 1, 50), posting("cat", 2, 1, 5)];
        let ranked = rank(&stats(10, 100, &[("cat", 2)]), &postings);
        assert_eq!(ranked[0].0, 2);
        assert!(ranked[0].1 > ranked[1].1);
    }

    #[test]
    fn a_term_counts_by_the_messages_holding_it_not_the_postings_read() {
        // "meeting" in 900 of 1,000 messages though only a few postings were read: it
        // weighs next to nothing beside "zanzibar" in one.
        let postings = [posting("meeting", 7, 1, 5), posting("zanzibar", 8, 1, 5)];
        let ranked = rank(
            &stats(1000, 5000, &[("meeting", 900), ("zanzibar", 1)]),
            &postings,
        );
        assert_eq!(ranked[0].0, 8);
        assert!(ranked[0].1 > 20.0 * ranked[1].1, "{ranked:?}");
    }

    #[test]
    fn absent_terms_are_never_read_and_common_ones_only_when_asked() {
        let terms: Vec<String> = ["meeting", "zanzibar", "unknown", "friday"]
            .map(String::from)
            .into();
        let known = stats(
            100,
            500,
            &[("meeting", 50), ("zanzibar", 1), ("friday", 49)],
        );
        assert_eq!(
            known.terms_to_read(&terms, false),
            [&terms[0], &terms[1], &terms[3]]
        );
        assert_eq!(known.terms_to_read(&terms, true), [&terms[1], &terms[3]]);
        // In a short history nothing is common.
        let short = stats(4, 20, &[("meeting", 4)]);
        assert_eq!(short.terms_to_read(&terms, true), [&terms[0]]);
    }
}
