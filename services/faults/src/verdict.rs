//! After a fault: its answers counted by outcome, then the reservations, each user's
//! spending and the history checked against them, into the fault's [`Row`].

use std::collections::BTreeMap;

use crate::World;
use crate::checks::{self, Conversations, Spending};
use crate::client::{Answer, Caller, Outcome};
use crate::table::Row;

/// Counts the answers, then checks the history, the spending and the reservations.
pub(crate) async fn check(
    world: &World,
    row: &mut Row,
    answers: &[Answer],
    conversations: &BTreeMap<usize, (Caller, String)>,
    spent_before: &BTreeMap<String, i64>,
    swept_before: usize,
) {
    count_answers(row, answers);
    check_reservations(world, row, swept_before).await;
    for (user_id, before) in spent_before {
        check_spending(world, row, answers, user_id, *before).await;
    }
    check_history(world, row, &Conversations::of(answers, conversations)).await;
}

/// Each answer counted by its outcome, with the errors and the slowest answer noted.
fn count_answers(row: &mut Row, answers: &[Answer]) {
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut undocumented: BTreeMap<String, usize> = BTreeMap::new();
    for answer in answers {
        row.answers += 1;
        if answer.hung() {
            row.hangs += 1;
        }
        match &answer.outcome {
            Outcome::Ok { history_saved, .. } => {
                row.ok += 1;
                row.saved_false += usize::from(*history_saved == Some(false));
            }
            Outcome::Documented {
                status,
                code,
                charged_unknown,
            } => {
                row.documented += 1;
                let status = if *charged_unknown {
                    "event:error".to_owned()
                } else {
                    status.to_string()
                };
                *errors.entry(format!("{status} {code}")).or_default() += 1;
            }
            Outcome::Refused => row.refused += 1,
            Outcome::Undocumented(what) => {
                row.undocumented += 1;
                *undocumented.entry(what.clone()).or_default() += 1;
            }
            Outcome::Hang => {}
        }
    }
    if !errors.is_empty() {
        row.notes.push(format!("errors: {}", counted(&errors)));
    }
    if !undocumented.is_empty() {
        row.notes
            .push(format!("undocumented: {}", counted(&undocumented)));
    }
    let slowest = answers.iter().map(|answer| answer.latency).max();
    if let Some(slowest) = slowest {
        row.notes
            .push(format!("slowest answer {:.1} s", slowest.as_secs_f64()));
    }
}

/// The reservations left open, and those the sweeper refunded since `swept_before`.
async fn check_reservations(world: &World, row: &mut Row, swept_before: usize) {
    match world.quota.settled().await {
        Ok((open, swept)) => {
            row.open_reservations = open;
            let new_swept = swept.saturating_sub(swept_before);
            if new_swept > 0 {
                row.notes.push(format!(
                    "{new_swept} reservations refunded by the sweeper (their settlement never came)"
                ));
            }
        }
        Err(error) => row
            .notes
            .push(format!("reservations unreadable: {error:#}")),
    }
}

/// What `user_id` spent since `before` against what their answers told them.
async fn check_spending(
    world: &World,
    row: &mut Row,
    answers: &[Answer],
    user_id: &str,
    before: i64,
) {
    let theirs: Vec<&Answer> = answers.iter().filter(|a| a.user_id == user_id).collect();
    let told = theirs
        .iter()
        .map(|answer| match answer.outcome {
            Outcome::Ok { total_tokens, .. } => total_tokens,
            _ => 0,
        })
        .sum();
    let untold = theirs.iter().filter(|a| a.outcome.charge_unknown()).count();
    let spent = match world.quota.spent(user_id).await {
        Ok(after) => after - before,
        Err(error) => {
            row.notes.push(format!("spending unreadable: {error:#}"));
            row.spending_mismatch += 1;
            return;
        }
    };
    let spending = Spending {
        user_id: user_id.to_owned(),
        spent,
        told,
        untold,
    };
    if !spending.matches() {
        row.spending_mismatch += 1;
        row.notes.push(format!(
            "{}: spent {} but told {} ({} untold)",
            spending.user_id, spending.spent, spending.told, spending.untold
        ));
    }
}

/// The acknowledged turns against the history, in MySQL and through the API.
async fn check_history(world: &World, row: &mut Row, conversations: &Conversations<'_>) {
    match checks::history_in_mysql(&world.mariadb.url("chatdb"), conversations).await {
        Ok(faults) => row.mysql = faults,
        Err(error) => {
            row.notes
                .push(format!("chat_history unreadable: {error:#}"));
            row.aborted = Some("chat_history unreadable");
        }
    }
    match checks::history_in_api(&world.http, conversations).await {
        Ok(faults) => row.api = faults,
        Err(error) => {
            row.notes
                .push(format!("conversation API failed: {error:#}"));
            row.aborted = Some("conversation API failed");
        }
    }
    if !row.mysql.examples.is_empty() {
        row.notes
            .push(format!("in MySQL: {}", row.mysql.examples.join(", ")));
    }
    if !row.api.examples.is_empty() {
        row.notes
            .push(format!("through the API: {}", row.api.examples.join(", ")));
    }
}

/// `a ×3, b ×1`.
fn counted(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(what, count)| format!("{what} ×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
