//! The soak's pass marks: no errors, memory flat after warm-up (and in each half), and
//! latency steady from the first window to the last.

use std::fmt::Write as _;

use super::super::analysis::{
    MIN_LATENCY_WINDOW_SECONDS, MIN_PHASE_FIT_SECONDS, flat_threshold, latency_steady,
};
use super::{Check, MemoryRow, SoakReport};

impl SoakReport {
    /// Every check the report's figures support.
    pub(super) fn judge(&self) -> Vec<Check> {
        let mut checks = vec![self.no_errors()];
        checks.extend(self.memory_flat());
        checks.extend(self.latency_steady());
        checks
    }

    /// No request and no scrape failed.
    fn no_errors(&self) -> Check {
        let scrape_failures: u64 = self.scrapes.values().map(|row| row.failures).sum();
        let mut detail = format!(
            "{} of {} requests failed; {scrape_failures} scrapes failed",
            self.errors,
            self.requests as u64 + self.errors
        );
        if let Some((message, count)) = self.error_messages.iter().max_by_key(|(_, count)| **count)
        {
            let _ = write!(detail, "; most often ({count}x): {message}");
        }
        Check {
            name: "no errors".to_owned(),
            passed: self.errors == 0 && scrape_failures == 0,
            detail,
        }
    }

    /// Memory flat after warm-up, and in each half long enough to fit a slope to.
    fn memory_flat(&self) -> Vec<Check> {
        let timeline = &self.timeline;
        let phases = [
            ("after warm-up", timeline.seconds - timeline.warm_up, None),
            (
                "without scraper",
                timeline.scrape_from - timeline.warm_up,
                Some(false),
            ),
            (
                "with scraper",
                timeline.seconds - timeline.scrape_from,
                Some(true),
            ),
        ];
        phases
            .into_iter()
            // Too short a half is reported, not judged.
            .filter(|(_, span, scraped)| scraped.is_none() || *span >= MIN_PHASE_FIT_SECONDS)
            .map(|(phase, span, scraped)| self.memory_flat_over(phase, span, scraped))
            .collect()
    }

    /// Memory flat over one phase of `span` seconds: `scraped` picks the half, `None`
    /// the whole run after warm-up.
    fn memory_flat_over(&self, phase: &str, span: f64, scraped: Option<bool>) -> Check {
        let growing: Vec<String> = self
            .memory
            .iter()
            .filter_map(|row| growth(row, span, scraped))
            .collect();
        Check {
            name: format!("memory flat {phase}"),
            passed: growing.is_empty() && !self.memory.is_empty(),
            detail: if growing.is_empty() {
                format!(
                    "every process's slope over {span:.0} s under max(1 %/min of its RSS, 512 KiB/min, 2 MiB over the span)"
                )
            } else {
                growing.join("; ")
            },
        }
    }

    /// Latency of all traffic steady from the first window to the last, if the windows
    /// are long enough to judge.
    fn latency_steady(&self) -> Option<Check> {
        let timeline = &self.timeline;
        // Windows too short to judge are reported, not judged: over 16 s on a busy machine,
        // one noisy neighbour moves a p99 by more than a fifth.
        if timeline.window < MIN_LATENCY_WINDOW_SECONDS {
            return None;
        }
        let all = self.latency.iter().find(|row| row.traffic == "all")?;
        let mut drifted = Vec::new();
        for ((name, first), (_, last)) in all.first.named().into_iter().zip(all.last.named()) {
            if !latency_steady(first, last) {
                drifted.push(format!("{name} {first:.1} -> {last:.1} ms"));
            }
        }
        let empty = all.first.requests == 0 || all.last.requests == 0;
        Some(Check {
            name: "latency steady".to_owned(),
            passed: drifted.is_empty() && !empty,
            detail: if empty {
                "a window had no request".to_owned()
            } else if drifted.is_empty() {
                format!(
                    "p50, p95 and p99 of the last {:.0} s within 20 % (or 2 ms) of the first {:.0} s after warm-up",
                    timeline.window, timeline.window
                )
            } else {
                drifted.join("; ")
            },
        })
    }
}

/// Why one process's memory is not flat over the phase, if it is not.
fn growth(row: &MemoryRow, span: f64, scraped: Option<bool>) -> Option<String> {
    let slope = match scraped {
        None => row.slope_kib_per_minute,
        Some(false) => row.slope_without_scraper,
        Some(true) => row.slope_with_scraper,
    };
    let limit = flat_threshold(row.mean_kib, span);
    match slope {
        _ if !row.alive_at_end => Some(format!("{} exited", row.process)),
        Some(slope) if slope < limit => None,
        Some(slope) => Some(format!(
            "{} {slope:+.0} KiB/min (limit {limit:.0})",
            row.process
        )),
        None => Some(format!("{} has too few samples", row.process)),
    }
}
