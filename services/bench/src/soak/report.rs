//! The soak's result: its checks, and the figures behind them (memory by process,
//! latency by window and by phase, errors, scrapes), as a table for the terminal, as
//! markdown and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::analysis::{
    MIN_LATENCY_WINDOW_SECONDS, MIN_PHASE_FIT_SECONDS, Percentiles, Timeline, flat_threshold,
    latency_steady, slope_per_minute,
};
use super::{Record, SoakOptions};

/// Every process's resident memory at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct RssSample {
    /// Seconds from the start of the load.
    pub at: f64,
    pub kib: BTreeMap<String, f64>,
}

/// What the scraper got from one process's `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrapeRow {
    pub scrapes: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    /// Series served by the first and the last scrape: labels taken from requests would
    /// make the count grow with the load.
    pub first_series: Option<usize>,
    pub last_series: Option<usize>,
}

impl ScrapeRow {
    pub(super) fn record(&mut self, answer: Result<usize, String>) {
        match answer {
            Ok(series) => {
                self.scrapes += 1;
                self.first_series.get_or_insert(series);
                self.last_series = Some(series);
            }
            Err(error) => {
                self.failures += 1;
                self.last_failure = Some(error);
            }
        }
    }
}

/// What the run observed, for [`SoakReport::new`] to judge.
#[derive(Debug, Default)]
pub struct Observed {
    pub records: Vec<Record>,
    /// Each failed request's message, counted.
    pub errors: BTreeMap<String, u64>,
    pub scrapes: BTreeMap<String, ScrapeRow>,
    pub rss: Vec<RssSample>,
    /// CPU seconds each process spent during the load.
    pub cpu_seconds: BTreeMap<String, f64>,
}

/// One process's memory after warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub process: String,
    /// Resident memory at the end of warm-up and at the end of the run, and the most
    /// sampled at any time.
    pub start_kib: f64,
    pub end_kib: f64,
    pub peak_kib: f64,
    /// The least-squares slope of every sample after warm-up.
    pub slope_kib_per_minute: Option<f64>,
    /// The same over the half without a scraper (after warm-up) and the half with one.
    pub slope_without_scraper: Option<f64>,
    pub slope_with_scraper: Option<f64>,
    /// The mean after warm-up, which sets the threshold ([`flat_threshold`]).
    pub mean_kib: f64,
    /// The largest flat slope after warm-up.
    pub threshold_kib_per_minute: f64,
    /// The slope over the request rate: what each request would leave behind if the
    /// growth were a leak.
    pub bytes_per_request: Option<f64>,
    /// Still running when the load ended.
    pub alive_at_end: bool,
    /// CPU time over the whole load per request answered.
    pub cpu_ms_per_request: Option<f64>,
}

/// Latency of one kind of traffic in the first and the last window.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// `all`, `chat` or `stream`.
    pub traffic: String,
    pub first: Percentiles,
    pub last: Percentiles,
}

/// One half of the run: without the scraper (after warm-up), then with it.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRow {
    pub phase: String,
    pub from: f64,
    pub to: f64,
    pub requests_per_second: f64,
    pub latency: Percentiles,
}

/// One pass mark.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub commit: String,
    pub cores: usize,
    pub clients: usize,
    pub timeline: Timeline,
    pub requests: usize,
    pub errors: u64,
    /// Each failure's message, counted.
    pub error_messages: BTreeMap<String, u64>,
    pub phases: Vec<PhaseRow>,
    pub latency: Vec<LatencyRow>,
    pub memory: Vec<MemoryRow>,
    pub scrapes: BTreeMap<String, ScrapeRow>,
    pub checks: Vec<Check>,
    pub rss_samples: Vec<RssSample>,
}

/// The percentiles of the requests of `records` sent within `[from, to)` that `keep`.
fn window(
    records: &[Record],
    (from, to): (f64, f64),
    keep: impl Fn(&Record) -> bool,
) -> Percentiles {
    Percentiles::of(
        records
            .iter()
            .filter(|record| record.at >= from && record.at < to && keep(record))
            .map(|record| record.latency_us)
            .collect(),
    )
}

impl SoakReport {
    pub fn new(options: &SoakOptions, timeline: Timeline, observed: Observed) -> Self {
        let Observed {
            records,
            errors: error_messages,
            scrapes,
            rss: rss_samples,
            cpu_seconds,
        } = observed;
        let records = records.as_slice();
        let latency = [("all", None), ("chat", Some(false)), ("stream", Some(true))]
            .into_iter()
            .map(|(traffic, stream)| {
                let keep = |record: &Record| stream.is_none_or(|stream| record.stream == stream);
                LatencyRow {
                    traffic: traffic.to_owned(),
                    first: window(records, timeline.first_window(), keep),
                    last: window(records, timeline.last_window(), keep),
                }
            })
            .collect();
        let halves = [
            ("without scraper", timeline.warm_up, timeline.scrape_from),
            ("with scraper", timeline.scrape_from, timeline.seconds),
        ];
        let phases = halves
            .into_iter()
            .map(|(phase, from, to)| {
                let latency = window(records, (from, to), |_| true);
                PhaseRow {
                    phase: phase.to_owned(),
                    from,
                    to,
                    requests_per_second: latency.requests as f64 / (to - from).max(f64::EPSILON),
                    latency,
                }
            })
            .collect();
        let measured = records
            .iter()
            .filter(|record| record.at >= timeline.warm_up)
            .count();
        let per_minute = measured as f64 * 60.0 / (timeline.seconds - timeline.warm_up);
        let mut memory = memory_rows(&timeline, &rss_samples, per_minute);
        for row in &mut memory {
            row.cpu_ms_per_request = cpu_seconds
                .get(&row.process)
                .filter(|_| !records.is_empty())
                .map(|seconds| seconds * 1000.0 / records.len() as f64);
        }
        let mut report = Self {
            commit: crate::report::commit(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            clients: options.clients,
            timeline,
            requests: records.len(),
            errors: error_messages.values().sum(),
            error_messages,
            phases,
            latency,
            memory,
            scrapes,
            checks: Vec::new(),
            rss_samples,
        };
        report.checks = report.judge();
        report
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|check| check.passed)
    }

    fn judge(&self) -> Vec<Check> {
        let mut checks = Vec::new();
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
        checks.push(Check {
            name: "no errors".to_owned(),
            passed: self.errors == 0 && scrape_failures == 0,
            detail,
        });
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
        for (phase, span, scraped) in phases {
            // Too short a half is reported, not judged.
            if scraped.is_some() && span < MIN_PHASE_FIT_SECONDS {
                continue;
            }
            let growing: Vec<String> = self
                .memory
                .iter()
                .filter_map(|row| {
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
                })
                .collect();
            checks.push(Check {
                name: format!("memory flat {phase}"),
                passed: growing.is_empty() && !self.memory.is_empty(),
                detail: if growing.is_empty() {
                    format!(
                        "every process's slope over {span:.0} s under max(1 %/min of its RSS, 512 KiB/min, 2 MiB over the span)"
                    )
                } else {
                    growing.join("; ")
                },
            });
        }
        // Windows too short to judge are reported, not judged: over 16 s on a busy machine,
        // one noisy neighbour moves a p99 by more than a fifth.
        let judged = timeline.window >= MIN_LATENCY_WINDOW_SECONDS;
        if let Some(all) = self.latency.iter().find(|row| row.traffic == "all")
            && judged
        {
            let mut drifted = Vec::new();
            for ((name, first), (_, last)) in all.first.named().into_iter().zip(all.last.named()) {
                if !latency_steady(first, last) {
                    drifted.push(format!("{name} {first:.1} -> {last:.1} ms"));
                }
            }
            let empty = all.first.requests == 0 || all.last.requests == 0;
            checks.push(Check {
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
            });
        }
        checks
    }

    /// The report's sections: a title, a header and rows each.
    fn sections(&self) -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
        let timeline = &self.timeline;
        let owned = |cells: &[&str]| cells.iter().map(|cell| (*cell).to_owned()).collect();
        let mut sections = Vec::new();
        sections.push((
            "checks".to_owned(),
            owned(&["check", "result", "detail"]),
            self.checks
                .iter()
                .map(|check| {
                    vec![
                        check.name.clone(),
                        if check.passed { "pass" } else { "FAIL" }.to_owned(),
                        check.detail.clone(),
                    ]
                })
                .collect(),
        ));
        let ms = |value: f64| format!("{value:.1}");
        let (first, last) = (timeline.first_window(), timeline.last_window());
        sections.push((
            format!(
                "latency (ms): first window {:.0}-{:.0} s{} vs last {:.0}-{:.0} s (scraper)",
                first.0,
                first.1,
                if first.1 <= timeline.scrape_from {
                    " (no scraper)"
                } else {
                    ""
                },
                last.0,
                last.1
            ),
            owned(&[
                "traffic",
                "requests",
                "p50",
                "p95",
                "p99",
                "last requests",
                "last p50",
                "last p95",
                "last p99",
            ]),
            self.latency
                .iter()
                .map(|row| {
                    vec![
                        row.traffic.clone(),
                        row.first.requests.to_string(),
                        ms(row.first.p50_ms),
                        ms(row.first.p95_ms),
                        ms(row.first.p99_ms),
                        row.last.requests.to_string(),
                        ms(row.last.p50_ms),
                        ms(row.last.p95_ms),
                        ms(row.last.p99_ms),
                    ]
                })
                .collect(),
        ));
        sections.push((
            "phases (after warm-up)".to_owned(),
            owned(&["phase", "seconds", "req/s", "p50", "p95", "p99"]),
            self.phases
                .iter()
                .map(|phase| {
                    vec![
                        phase.phase.clone(),
                        format!("{:.0}-{:.0}", phase.from, phase.to),
                        format!("{:.0}", phase.requests_per_second),
                        ms(phase.latency.p50_ms),
                        ms(phase.latency.p95_ms),
                        ms(phase.latency.p99_ms),
                    ]
                })
                .collect(),
        ));
        let slope =
            |value: Option<f64>| value.map_or("-".to_owned(), |value| format!("{value:+.0}"));
        sections.push((
            format!(
                "resident memory after the {:.0} s warm-up (slopes in KiB/min)",
                timeline.warm_up
            ),
            owned(&[
                "process",
                "start MiB",
                "end MiB",
                "peak MiB",
                "slope",
                "limit",
                "B/request",
                "no scraper",
                "scraper",
                "cpu ms/req",
            ]),
            self.memory
                .iter()
                .map(|row| {
                    vec![
                        row.process.clone(),
                        format!("{:.1}", row.start_kib / 1024.0),
                        if row.alive_at_end {
                            format!("{:.1}", row.end_kib / 1024.0)
                        } else {
                            "exited".to_owned()
                        },
                        format!("{:.1}", row.peak_kib / 1024.0),
                        slope(row.slope_kib_per_minute),
                        format!("{:.0}", row.threshold_kib_per_minute),
                        row.bytes_per_request
                            .map_or("-".to_owned(), |bytes| format!("{bytes:+.1}")),
                        slope(row.slope_without_scraper),
                        slope(row.slope_with_scraper),
                        row.cpu_ms_per_request
                            .map_or("-".to_owned(), |ms| format!("{ms:.2}")),
                    ]
                })
                .collect(),
        ));
        let series = |value: Option<usize>| value.map_or("-".to_owned(), |value| value.to_string());
        sections.push((
            "scrapes of /metrics (second half)".to_owned(),
            owned(&[
                "process",
                "scrapes",
                "failures",
                "first series",
                "last series",
            ]),
            self.scrapes
                .iter()
                .map(|(process, row)| {
                    vec![
                        process.clone(),
                        row.scrapes.to_string(),
                        row.failures.to_string(),
                        series(row.first_series),
                        series(row.last_series),
                    ]
                })
                .collect(),
        ));
        if !self.error_messages.is_empty() {
            sections.push((
                "errors".to_owned(),
                owned(&["count", "message"]),
                self.error_messages
                    .iter()
                    .map(|(message, count)| vec![count.to_string(), message.clone()])
                    .collect(),
            ));
        }
        sections
    }

    fn heading(&self) -> String {
        format!(
            "soak: commit {} on {} cores, {} clients (half chat, half stream) for {:.0} s, {} requests, {} errors; {}",
            self.commit,
            self.cores,
            self.clients,
            self.timeline.seconds,
            self.requests,
            self.errors,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }

    /// The report as aligned columns, for the terminal.
    pub fn table(&self) -> String {
        let mut out = self.heading();
        out.push('\n');
        for (title, header, rows) in self.sections() {
            let _ = writeln!(out, "\n{title}");
            let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.chars().count());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, width)| format!("{cell:<width$}"))
                    .collect();
                let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
            }
        }
        out
    }

    /// The report as markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n", self.heading());
        for (title, header, rows) in self.sections() {
            let _ = writeln!(out, "\n## {title}\n");
            let _ = writeln!(out, "| {} |", header.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
            for row in rows {
                let cells: Vec<String> = row.iter().map(|cell| cell.replace('|', "\\|")).collect();
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            }
        }
        out
    }
}

/// Each process's memory after warm-up, from the samples; `requests_per_minute` after
/// warm-up turns a slope into bytes a request.
fn memory_rows(
    timeline: &Timeline,
    samples: &[RssSample],
    requests_per_minute: f64,
) -> Vec<MemoryRow> {
    let processes: std::collections::BTreeSet<&String> = samples
        .iter()
        .flat_map(|sample| sample.kib.keys())
        .collect();
    processes
        .into_iter()
        .map(|process| {
            let series = |from: f64, to: f64| -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter(|sample| sample.at >= from && sample.at <= to)
                    .filter_map(|sample| Some((sample.at, *sample.kib.get(process)?)))
                    .collect()
            };
            let measured = series(timeline.warm_up, f64::MAX);
            let slope = slope_per_minute(&measured);
            let mean =
                measured.iter().map(|(_, kib)| kib).sum::<f64>() / measured.len().max(1) as f64;
            MemoryRow {
                process: process.clone(),
                start_kib: measured.first().map_or(0.0, |(_, kib)| *kib),
                end_kib: measured.last().map_or(0.0, |(_, kib)| *kib),
                peak_kib: series(0.0, f64::MAX)
                    .iter()
                    .map(|(_, kib)| *kib)
                    .fold(0.0, f64::max),
                slope_kib_per_minute: slope,
                slope_without_scraper: slope_per_minute(&series(
                    timeline.warm_up,
                    timeline.scrape_from,
                )),
                slope_with_scraper: slope_per_minute(&series(timeline.scrape_from, f64::MAX)),
                mean_kib: mean,
                threshold_kib_per_minute: flat_threshold(mean, timeline.seconds - timeline.warm_up),
                bytes_per_request: slope
                    .filter(|_| requests_per_minute > 0.0)
                    .map(|slope| slope * 1024.0 / requests_per_minute),
                alive_at_end: samples
                    .last()
                    .is_some_and(|sample| sample.kib.contains_key(process)),
                cpu_ms_per_request: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slope_kib_per_sample: f64, last_p99_us: u64) -> SoakReport {
        let options = SoakOptions::full(Default::default(), String::new(), String::new());
        let timeline = Timeline::new(600.0);
        let rss_samples = (0..=300)
            .map(|i| RssSample {
                at: f64::from(i) * 2.0,
                kib: BTreeMap::from([(
                    "gateway-1".to_owned(),
                    60_000.0 + f64::from(i) * slope_kib_per_sample,
                )]),
            })
            .collect();
        let records: Vec<Record> = (0..6000)
            .map(|i| Record {
                at: f64::from(i) * 0.1,
                latency_us: if f64::from(i) * 0.1 >= 540.0 && i % 50 == 0 {
                    last_p99_us
                } else {
                    10_000
                },
                stream: i % 2 == 0,
            })
            .collect();
        let observed = Observed {
            records,
            rss: rss_samples,
            ..Observed::default()
        };
        SoakReport::new(&options, timeline, observed)
    }

    fn failed(report: &SoakReport) -> Vec<&str> {
        report
            .checks
            .iter()
            .filter(|check| !check.passed)
            .map(|check| check.name.as_str())
            .collect()
    }

    #[test]
    fn a_steady_run_passes_every_check() {
        let steady = report(0.0, 10_000);
        assert!(steady.passed(), "{}", steady.table());
        assert_eq!(steady.checks.len(), 5, "{}", steady.table());
        assert!(
            steady
                .markdown()
                .contains("| memory flat after warm-up | pass |")
        );
    }

    #[test]
    fn growing_memory_and_a_slower_end_fail() {
        // 30 KiB every 2 s is 900 KiB/min, over 1 % of 60 MB a minute.
        let leaking = report(30.0, 10_000);
        assert_eq!(
            failed(&leaking),
            [
                "memory flat after warm-up",
                "memory flat without scraper",
                "memory flat with scraper"
            ]
        );
        let slower = report(0.0, 50_000);
        assert_eq!(failed(&slower), ["latency steady"]);
        assert!(
            slower.table().contains("p99 10.0 -> 50.0 ms"),
            "{}",
            slower.table()
        );
    }
}
