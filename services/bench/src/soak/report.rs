//! The soak's result: the figures (memory by process, latency by window and by phase,
//! errors, scrapes) and its checks, as JSON here; the checks are judged in `checks`, and
//! laid out as a table for the terminal or as markdown in `render`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::analysis::{Percentiles, Timeline, flat_threshold, slope_per_minute};
use super::{Record, SoakOptions};

mod checks;
mod render;

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
        let mut report = Self {
            commit: crate::report::commit(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            clients: options.clients,
            requests: records.len(),
            errors: error_messages.values().sum(),
            error_messages,
            phases: phase_rows(records, &timeline),
            latency: latency_rows(records, &timeline),
            memory: memory_with_cpu(records, &timeline, &rss_samples, &cpu_seconds),
            timeline,
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
}

/// Latency of all traffic, of chat and of stream, in the first and the last window.
fn latency_rows(records: &[Record], timeline: &Timeline) -> Vec<LatencyRow> {
    [("all", None), ("chat", Some(false)), ("stream", Some(true))]
        .into_iter()
        .map(|(traffic, stream)| {
            let keep = |record: &Record| stream.is_none_or(|stream| record.stream == stream);
            LatencyRow {
                traffic: traffic.to_owned(),
                first: window(records, timeline.first_window(), keep),
                last: window(records, timeline.last_window(), keep),
            }
        })
        .collect()
}

/// Throughput and latency of the half without the scraper and the half with it.
fn phase_rows(records: &[Record], timeline: &Timeline) -> Vec<PhaseRow> {
    let halves = [
        ("without scraper", timeline.warm_up, timeline.scrape_from),
        ("with scraper", timeline.scrape_from, timeline.seconds),
    ];
    halves
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
        .collect()
}

/// Each process's memory rows, with the CPU time it spent per request.
fn memory_with_cpu(
    records: &[Record],
    timeline: &Timeline,
    rss_samples: &[RssSample],
    cpu_seconds: &BTreeMap<String, f64>,
) -> Vec<MemoryRow> {
    let measured = records
        .iter()
        .filter(|record| record.at >= timeline.warm_up)
        .count();
    let per_minute = measured as f64 * 60.0 / (timeline.seconds - timeline.warm_up);
    let mut memory = memory_rows(timeline, rss_samples, per_minute);
    for row in &mut memory {
        row.cpu_ms_per_request = cpu_seconds
            .get(&row.process)
            .filter(|_| !records.is_empty())
            .map(|seconds| seconds * 1000.0 / records.len() as f64);
    }
    memory
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
