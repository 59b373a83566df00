//! What each fault did, one row per fault, and the table of them all.

use std::fmt::Write as _;
use std::time::Duration;

use crate::checks::HistoryFaults;
use crate::faults::Fault;

/// A probe chat must be saved, and its conversation read back, within this long after
/// the fault ended.
pub const RECOVERY_WITHIN: Duration = Duration::from_secs(10);

/// The outcomes of one fault.
#[derive(Debug, Clone)]
pub struct Row {
    pub fault: Fault,
    pub answers: usize,
    /// Answered 200 (or a stream's `done`).
    pub ok: usize,
    /// Of those, answered `history_saved: false`.
    pub saved_false: usize,
    pub documented: usize,
    /// No connection could be made (the gateway was down): nothing was sent.
    pub refused: usize,
    pub undocumented: usize,
    pub hangs: usize,
    pub mysql: HistoryFaults,
    pub api: HistoryFaults,
    /// Users whose spending is not what they were told.
    pub spending_mismatch: usize,
    pub open_reservations: usize,
    /// From the fault's end to a probe chat saved and read back; `None`: not within the
    /// limit.
    pub recovery: Option<Duration>,
    /// What went wrong, and what the numbers behind the counts were.
    pub notes: Vec<String>,
    /// Why the fault or a check could not be run to its end, if it could not (the
    /// detail is in the notes).
    pub aborted: Option<&'static str>,
}

impl Row {
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            answers: 0,
            ok: 0,
            saved_false: 0,
            documented: 0,
            refused: 0,
            undocumented: 0,
            hangs: 0,
            mysql: HistoryFaults::default(),
            api: HistoryFaults::default(),
            spending_mismatch: 0,
            open_reservations: 0,
            recovery: None,
            notes: Vec::new(),
            aborted: None,
        }
    }

    /// The invariants that failed, by name; empty when the fault passed.
    pub fn failures(&self) -> Vec<&'static str> {
        let checks = [
            (self.aborted.is_some(), self.aborted.unwrap_or_default()),
            (self.undocumented > 0, "undocumented answers"),
            (self.hangs > 0, "hangs"),
            (self.mysql.lost + self.api.lost > 0, "lost turns"),
            (
                self.mysql.duplicated + self.api.duplicated > 0,
                "duplicated turns",
            ),
            (
                self.mysql.out_of_order + self.api.out_of_order > 0,
                "turns out of order",
            ),
            (self.spending_mismatch > 0, "spending mismatch"),
            (self.open_reservations > 0, "open reservations"),
            (self.recovery.is_none(), "no recovery"),
        ];
        checks
            .into_iter()
            .filter(|(failed, _)| *failed)
            .map(|(_, name)| name)
            .collect()
    }
}

/// The markdown table of every fault, then the notes.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| fault | answers | ok (saved:false) | documented errors | refused | undocumented | hangs \
         | lost turns (db/api) | duplicated (db/api) | out of order | spending mismatch | open reservations \
         | recovery s | verdict |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for row in rows {
        let recovery = row.recovery.map_or_else(
            || format!("> {}", RECOVERY_WITHIN.as_secs()),
            |time| format!("{:.1}", time.as_secs_f64()),
        );
        let failures = row.failures();
        let verdict = if failures.is_empty() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", failures.join(", "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {}/{} | {}/{} | {} | {} | {} | {} | {} |",
            row.fault.title(),
            row.answers,
            row.ok,
            row.saved_false,
            row.documented,
            row.refused,
            row.undocumented,
            row.hangs,
            row.mysql.lost,
            row.api.lost,
            row.mysql.duplicated,
            row.api.duplicated,
            row.mysql.out_of_order + row.api.out_of_order,
            row.spending_mismatch,
            row.open_reservations,
            recovery,
            verdict,
        );
    }
    let noted: Vec<&Row> = rows.iter().filter(|row| !row.notes.is_empty()).collect();
    if !noted.is_empty() {
        out.push('\n');
        for row in noted {
            let _ = writeln!(out, "- **{}**: {}", row.fault.slug(), row.notes.join("; "));
        }
    }
    out
}
