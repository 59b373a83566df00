use std::time::{Duration, Instant};

use super::*;
use crate::client::{Outcome, Route};

fn answer(seq: usize, saved: Option<bool>) -> Answer {
    Answer {
        client: 0,
        seq,
        user_id: "u".to_owned(),
        conversation_id: "c".to_owned(),
        route: Route::Chat,
        text: format!("turn {seq}"),
        sent_at: Instant::now(),
        latency: Duration::from_millis(10),
        outcome: Outcome::Ok {
            reply: format!("echo: turn {seq}"),
            total_tokens: 10,
            history_saved: saved,
        },
    }
}

fn rows(texts: &[(&str, &str)]) -> Vec<(String, String)> {
    texts
        .iter()
        .map(|(role, text)| ((*role).to_owned(), (*text).to_owned()))
        .collect()
}

#[test]
fn each_acknowledged_turn_once_and_in_order_passes() {
    let answers = [answer(0, Some(true)), answer(1, Some(true))];
    let answers: Vec<&Answer> = answers.iter().collect();
    let history = rows(&[
        ("user", "turn 0"),
        ("assistant", "echo: turn 0"),
        ("user", "turn 1"),
        ("assistant", "echo: turn 1"),
    ]);
    assert_eq!(history_faults(&history, &answers), HistoryFaults::default());
}

#[test]
fn a_missing_reply_a_doubled_message_and_a_swapped_turn_are_each_counted() {
    let answers = [
        answer(0, Some(true)),
        answer(1, Some(true)),
        answer(2, Some(true)),
        answer(3, Some(false)),
    ];
    let answers: Vec<&Answer> = answers.iter().collect();
    let history = rows(&[
        ("user", "turn 0"),
        // turn 0's reply is missing
        ("user", "turn 2"),
        ("assistant", "echo: turn 2"),
        ("user", "turn 1"),
        ("assistant", "echo: turn 1"),
        // not acknowledged, so not lost; but twice is twice
        ("user", "turn 3"),
        ("user", "turn 3"),
    ]);
    let faults = history_faults(&history, &answers);
    assert_eq!(faults.lost, 1, "{faults:?}");
    assert_eq!(faults.duplicated, 1, "{faults:?}");
    assert_eq!(faults.out_of_order, 1, "{faults:?}");
}

#[test]
fn spending_is_exact_unless_some_answer_did_not_tell() {
    let exact = Spending {
        user_id: "u".to_owned(),
        spent: 100,
        told: 100,
        untold: 0,
    };
    assert!(exact.matches());
    assert!(
        !Spending {
            spent: 90,
            ..exact.clone()
        }
        .matches(),
        "a settlement that never came"
    );
    let partial = Spending {
        spent: 140,
        untold: 1,
        ..exact.clone()
    };
    assert!(partial.matches(), "a broken stream's partial charge");
    assert!(
        !Spending {
            spent: 90,
            ..partial
        }
        .matches()
    );
}

#[test]
fn the_error_tables_are_the_readmes() {
    assert!(crate::client::documented(503, "service_unavailable"));
    assert!(crate::client::documented(0, "service_failed"));
    assert!(!crate::client::documented(502, "bad_gateway"));
    assert!(!crate::client::documented(500, ""));
}
