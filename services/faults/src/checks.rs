//! The invariants after a fault, read from where the truth is: MariaDB's `chat_history`
//! and the conversation API for the turns, Redis for the spending and the reservations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

use crate::client::{Answer, Caller};

/// How long a durable outbox may take to reach MySQL after the fault, before a turn
/// missing from it counts as lost.
const DRAIN_WITHIN: Duration = Duration::from_secs(20);
/// How long settlements (retried, or queued while Redis was away) may take to close
/// every reservation.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// Most a chat of this suite can be charged without telling (a broken stream, a cut
/// connection): its context, retrieval and output cap, generously.
pub const UNTOLD_BOUND: i64 = 5_000;

/// What one conversation's history shows against what its client was told.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistoryFaults {
    /// Acknowledged turns (or their replies) missing.
    pub lost: usize,
    /// Turns whose message or reply is there more than once.
    pub duplicated: usize,
    /// Acknowledged turns not in the order they were sent, or a reply not right after
    /// its message.
    pub out_of_order: usize,
    /// A few of the turns concerned, for the notes: `lost: <text>`.
    pub examples: Vec<String>,
}

/// Turns named in the notes, at most.
const EXAMPLES: usize = 4;

impl HistoryFaults {
    fn add(&mut self, other: Self) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        for example in other.examples {
            self.example(example);
        }
    }

    fn example(&mut self, example: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }
}

/// Compares `rows` (role, text), oldest first, with the answers of the one client that
/// wrote the conversation, in the order it sent them.
pub fn history_faults(rows: &[(String, String)], answers: &[&Answer]) -> HistoryFaults {
    let positions = |role: &str, text: &str| -> Vec<usize> {
        rows.iter()
            .enumerate()
            .filter(|(_, (row_role, row_text))| row_role == role && row_text == text)
            .map(|(index, _)| index)
            .collect()
    };
    let mut faults = HistoryFaults::default();
    let mut last_position = None;
    for answer in answers {
        let asked = positions("user", &answer.text);
        if asked.len() > 1 {
            faults.duplicated += 1;
            faults.example(format!("{}× '{}'", asked.len(), answer.text));
        }
        let crate::client::Outcome::Ok { reply, .. } = &answer.outcome else {
            continue;
        };
        if !answer.acknowledged() {
            continue;
        }
        let replied = positions("assistant", reply);
        if asked.is_empty() || replied.is_empty() {
            faults.lost += 1;
            let missing = if asked.is_empty() { "message" } else { "reply" };
            faults.example(format!("lost {missing} of '{}'", answer.text));
            continue;
        }
        if replied.len() > 1 && asked.len() <= 1 {
            faults.duplicated += 1;
            faults.example(format!("{}× the reply to '{}'", replied.len(), answer.text));
        }
        let (question, reply) = (asked[0], replied[0]);
        let in_order = last_position.is_none_or(|last| question > last) && reply > question;
        if !in_order {
            faults.out_of_order += 1;
            faults.example(format!("out of order: '{}'", answer.text));
        }
        last_position = Some(reply);
    }
    faults
}

/// Each client's conversation, and the answers it got in the order it sent them.
pub struct Conversations<'a> {
    pub by_client: BTreeMap<usize, (&'a Caller, String, Vec<&'a Answer>)>,
}

impl<'a> Conversations<'a> {
    pub fn of(answers: &'a [Answer], callers: &'a BTreeMap<usize, (Caller, String)>) -> Self {
        let mut by_client: BTreeMap<usize, (&Caller, String, Vec<&Answer>)> = callers
            .iter()
            .map(|(client, (caller, conversation))| {
                (*client, (caller, conversation.clone(), Vec::new()))
            })
            .collect();
        for answer in answers {
            if let Some((_, _, list)) = by_client.get_mut(&answer.client) {
                list.push(answer);
            }
        }
        for (_, _, list) in by_client.values_mut() {
            list.sort_by_key(|answer| answer.seq);
        }
        Self { by_client }
    }

    fn ids(&self) -> Vec<String> {
        self.by_client
            .values()
            .map(|(_, id, _)| id.clone())
            .collect()
    }
}

/// The turns in MariaDB, waiting up to [`DRAIN_WITHIN`] for an outbox to drain:
/// what is still missing then is lost.
pub async fn history_in_mysql(
    mysql_url: &str,
    conversations: &Conversations<'_>,
) -> anyhow::Result<HistoryFaults> {
    let deadline = Instant::now() + DRAIN_WITHIN;
    loop {
        let read = read_mysql(mysql_url, &conversations.ids()).await;
        let faults = match &read {
            Ok(rows) => {
                let mut faults = HistoryFaults::default();
                for (_, id, answers) in conversations.by_client.values() {
                    let rows = rows.get(id).map(Vec::as_slice).unwrap_or_default();
                    faults.add(history_faults(rows, answers));
                }
                Some(faults)
            }
            Err(_) => None,
        };
        match (faults, Instant::now() < deadline) {
            (Some(faults), _) if faults.lost == 0 => return Ok(faults),
            (Some(faults), false) => return Ok(faults),
            (None, false) => return read.map(|_| HistoryFaults::default()),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// `chat_history` rows of these conversations, by conversation, oldest first.
async fn read_mysql(
    mysql_url: &str,
    conversation_ids: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<(String, String)>>> {
    let mut by_conversation: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    if conversation_ids.is_empty() {
        return Ok(by_conversation);
    }
    let pool = mysql_async::Pool::new(mysql_async::Opts::from_url(mysql_url)?);
    let mut connection = pool.get_conn().await?;
    let marks = vec!["?"; conversation_ids.len()].join(",");
    // A `/v1` client names its conversation by its own key (`external_key`).
    let mut ids = conversation_ids.to_vec();
    ids.extend_from_slice(conversation_ids);
    let rows: Vec<(String, String, String)> = connection
        .exec(
            format!(
                "SELECT COALESCE(c.external_key, h.conversation_id), CAST(h.role AS CHAR), h.text \
                 FROM chat_history h JOIN conversations c ON c.id = h.conversation_id \
                 WHERE h.conversation_id IN ({marks}) OR c.external_key IN ({marks}) \
                 ORDER BY h.id"
            ),
            ids,
        )
        .await?;
    drop(connection);
    pool.disconnect().await?;
    for (conversation, role, text) in rows {
        by_conversation
            .entry(conversation)
            .or_default()
            .push((role, text));
    }
    Ok(by_conversation)
}

/// The turns as the API shows them (`GET /conversations/{id}/messages`).
pub async fn history_in_api(
    http: &reqwest::Client,
    conversations: &Conversations<'_>,
) -> anyhow::Result<HistoryFaults> {
    let mut faults = HistoryFaults::default();
    for (caller, id, answers) in conversations.by_client.values() {
        // A `/v1` client knows its conversation by its own key only: MySQL's check
        // covers it.
        if answers
            .iter()
            .any(|answer| answer.route == crate::client::Route::V1)
        {
            continue;
        }
        let rows = caller.messages(http, id).await?;
        faults.add(history_faults(&rows, answers));
    }
    Ok(faults)
}

/// Redis, as the token service keeps it (`services/token/src/quota.rs`).
pub struct Quota {
    pub pool: chat_common::redis::Pool,
    pub prefix: String,
}

impl Quota {
    pub fn new(redis_addr: &str, prefix: &str) -> anyhow::Result<Self> {
        Ok(Self {
            pool: chat_common::redis::pool(redis_addr, 2, Duration::from_secs(2))?,
            prefix: prefix.to_owned(),
        })
    }

    /// Tokens `user_id` has spent today (held reservations included).
    pub async fn spent(&self, user_id: &str) -> anyhow::Result<i64> {
        // QUOTA_TIMEZONE is UTC, the default.
        let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
        let key = format!("{}token:{{{user_id}}}:{today}", self.prefix);
        let mut connection = self.pool.get().await?;
        let spent: Option<i64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await?;
        Ok(spent.unwrap_or(0))
    }

    /// Reservations still held: a reservation key with its `quota` and no `state`
    /// (the token service leaves `state: settled` and `state: swept` markers behind).
    /// Also answers how many the sweeper refunded (`swept`), whose usage went uncharged
    /// unless a late settlement still comes.
    pub async fn open_reservations(&self) -> anyhow::Result<(usize, usize)> {
        let mut connection = self.pool.get().await?;
        let pattern = format!("{}reservation:*", self.prefix);
        let mut cursor = 0u64;
        let (mut open, mut swept) = (0, 0);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            for key in keys {
                let (quota, state): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("quota")
                    .arg("state")
                    .query_async(&mut connection)
                    .await?;
                match (quota, state.as_deref()) {
                    (Some(_), None) => open += 1,
                    (_, Some("swept")) => swept += 1,
                    _ => {}
                }
            }
            if next == 0 {
                return Ok((open, swept));
            }
            cursor = next;
        }
    }

    /// Waits up to [`SETTLE_WITHIN`] for every reservation to be settled: how many are
    /// still open then, and how many were swept.
    pub async fn settled(&self) -> anyhow::Result<(usize, usize)> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let open = self.open_reservations().await;
            match open {
                Ok((0, swept)) => return Ok((0, swept)),
                Ok(open) if Instant::now() >= deadline => return Ok(open),
                Err(error) if Instant::now() >= deadline => return Err(error),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

/// One user's spending during a fault against what they were told.
#[derive(Debug, Clone)]
pub struct Spending {
    pub user_id: String,
    /// Change of the day's counter over the fault's run.
    pub spent: i64,
    /// Sum of `usage.total_tokens` of the answers.
    pub told: i64,
    /// Answers that may have been charged without saying how much.
    pub untold: usize,
}

impl Spending {
    /// Exact when every answer told its usage; else at least what was told and at most
    /// [`UNTOLD_BOUND`] more per answer that did not.
    pub fn matches(&self) -> bool {
        if self.untold == 0 {
            self.spent == self.told
        } else {
            self.spent >= self.told && self.spent <= self.told + UNTOLD_BOUND * self.untold as i64
        }
    }
}

#[cfg(test)]
mod tests;
