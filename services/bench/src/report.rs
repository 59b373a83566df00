//! The benchmark's result: one table on stdout, the same as JSON, and an SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Sample;
use crate::{NO_LIMITER_CASE, NO_RETRIEVAL_CASE, Options, TRUST_CASE, overload_cap, overload_case};

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub target: String,
    pub concurrency: usize,
    pub gateways: usize,
    pub requests: usize,
    pub errors: u64,
    /// Refused at once (503 shed, 429 limited): not errors; the latencies are the
    /// admitted requests'.
    pub shed: u64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Streams at concurrency 1: the provider's first chunk → the client's first delta.
    pub first_delta_lag_p50_ms: Option<f64>,
    /// Streams at concurrency 1: the provider's last chunk → the client's final event.
    pub done_lag_p50_ms: Option<f64>,
    /// Service CPU seconds per 1,000 requests of this case, by process.
    pub cpu_seconds_per_1000: BTreeMap<String, f64>,
}

fn percentile(sorted: &[u64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

impl CaseResult {
    pub fn from_sample(
        name: String,
        target: &str,
        concurrency: usize,
        gateways: usize,
        mut sample: Sample,
        cpu: BTreeMap<String, f64>,
    ) -> Self {
        sample.latencies_us.sort_unstable();
        sample.first_delta_lag_us.sort_unstable();
        sample.done_lag_us.sort_unstable();
        let requests = sample.latencies_us.len();
        let seconds = sample.elapsed.as_secs_f64().max(f64::EPSILON);
        let mean = if requests == 0 {
            0.0
        } else {
            sample.latencies_us.iter().sum::<u64>() as f64 / requests as f64 / 1000.0
        };
        let per_thousand = if requests == 0 {
            0.0
        } else {
            1000.0 / requests as f64
        };
        let lag = |values: &[u64]| (!values.is_empty()).then(|| percentile(values, 0.5));
        Self {
            name,
            target: target.to_owned(),
            concurrency,
            gateways,
            requests,
            errors: sample.errors,
            shed: sample.shed,
            requests_per_second: requests as f64 / seconds,
            p50_ms: percentile(&sample.latencies_us, 0.5),
            p99_ms: percentile(&sample.latencies_us, 0.99),
            mean_ms: mean,
            first_delta_lag_p50_ms: lag(&sample.first_delta_lag_us),
            done_lag_p50_ms: lag(&sample.done_lag_us),
            cpu_seconds_per_1000: cpu
                .into_iter()
                .filter(|_| target != "upstream")
                .map(|(process, seconds)| (process, seconds * per_thousand))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub commit: String,
    pub cores: usize,
    pub seconds_per_case: f64,
    pub rounds: usize,
    pub cases: Vec<CaseResult>,
    /// Median latency through the stack minus the provider's, at concurrency 1.
    pub overhead_p50_ms: BTreeMap<String, f64>,
    /// Median `/chat` latency at concurrency 1 with an API key minus the same through
    /// the gateway in trust mode (`AUTH_MODE=none`): what authentication adds.
    pub auth_overhead_p50_ms: Option<f64>,
    /// Median `/chat` latency at concurrency 1 minus the same through a gateway with no
    /// rate limit: what the shared limiter's check in Redis adds.
    pub limiter_overhead_p50_ms: Option<f64>,
    /// Median `/chat` latency at concurrency 1 minus the same through a gateway with
    /// `RETRIEVAL=off`: what retrieval adds (a search beside the filter and the context).
    pub retrieval_overhead_p50_ms: Option<f64>,
    /// At four times what the overload gateway admits at once: the p99 of the admitted
    /// requests over its value at the cap, and the share of requests shed.
    pub overload_p99_ratio: Option<f64>,
    pub overload_shed_share: Option<f64>,
    /// Peak resident memory of each process while the cases ran (set-up and warm-up
    /// left out), in MiB.
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// Resident memory of each process a few seconds after the last case, in MiB.
    pub idle_rss_mib: BTreeMap<String, f64>,
    /// Every process's `/metrics` text at the end, by name: written beside the results,
    /// not into them.
    #[serde(skip)]
    pub metrics: Vec<(String, String)>,
}

impl Results {
    pub fn new(
        cases: Vec<CaseResult>,
        peak_rss_mib: BTreeMap<String, f64>,
        options: &Options,
    ) -> Self {
        let p50 = |name: &str| {
            cases
                .iter()
                .find(|case| case.name == name)
                .map(|case| case.p50_ms)
        };
        let mut overhead_p50_ms = BTreeMap::new();
        if let Some(floor) = p50("upstream c=1") {
            for target in ["chat", "stream", "v1", "v1 stream"] {
                if let Some(through) = p50(&format!("{target} c=1")) {
                    overhead_p50_ms.insert(target.to_owned(), through - floor);
                }
            }
        }
        let auth_overhead_p50_ms = p50("chat c=1")
            .zip(p50(TRUST_CASE))
            .map(|(with_key, trusting)| with_key - trusting);
        let limiter_overhead_p50_ms = p50("chat c=1")
            .zip(p50(NO_LIMITER_CASE))
            .map(|(limited, unlimited)| limited - unlimited);
        let retrieval_overhead_p50_ms = p50("chat c=1")
            .zip(p50(NO_RETRIEVAL_CASE))
            .map(|(with, without)| with - without);
        let cap = overload_cap(options);
        let find = |name: String| cases.iter().find(|case| case.name == name);
        let (at_cap, overloaded) = (find(overload_case(cap, 1)), find(overload_case(cap, 4)));
        let overload_p99_ratio = at_cap
            .zip(overloaded)
            .filter(|(at_cap, _)| at_cap.p99_ms > 0.0)
            .map(|(at_cap, overloaded)| overloaded.p99_ms / at_cap.p99_ms);
        let overload_shed_share = overloaded
            .map(|case| case.shed as f64 / (case.shed as f64 + case.requests as f64).max(1.0));
        Self {
            commit: commit(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            seconds_per_case: options.seconds_per_case,
            rounds: options.rounds,
            cases,
            overhead_p50_ms,
            auth_overhead_p50_ms,
            limiter_overhead_p50_ms,
            retrieval_overhead_p50_ms,
            overload_p99_ratio,
            overload_shed_share,
            peak_rss_mib,
            idle_rss_mib: BTreeMap::new(),
            metrics: Vec::new(),
        }
    }

    /// Total errors over every case, counting a shed request as one outside the overload
    /// cases (nothing else should be refused): the benchmark requires zero.
    pub fn errors(&self) -> u64 {
        self.cases
            .iter()
            .map(|case| {
                let overload = case.name.contains(" cap=");
                case.errors + if overload { 0 } else { case.shed }
            })
            .sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        self.write_cases(&mut out);
        self.write_overheads(&mut out);
        self.write_resources(&mut out);
        out
    }

    /// The heading, and a line per case.
    fn write_cases(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "commit {} on {} cores, {} s per case in {} rounds",
            self.commit, self.cores, self.seconds_per_case, self.rounds
        );
        let _ = writeln!(
            out,
            "{:<28} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9} {:>12} {:>12} {:>10}",
            "case",
            "requests",
            "errors",
            "shed",
            "req/s",
            "p50 ms",
            "p99 ms",
            "1st delta ms",
            "done lag ms",
            "cpu s/1k"
        );
        for case in &self.cases {
            let lag =
                |value: Option<f64>| value.map_or("-".to_owned(), |value| format!("{value:.3}"));
            let cpu: f64 = case.cpu_seconds_per_1000.values().sum();
            let _ = writeln!(
                out,
                "{:<28} {:>9} {:>7} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>12} {:>12} {:>10}",
                case.name,
                case.requests,
                case.errors,
                case.shed,
                case.requests_per_second,
                case.p50_ms,
                case.p99_ms,
                lag(case.first_delta_lag_p50_ms),
                lag(case.done_lag_p50_ms),
                if case.target == "upstream" {
                    "-".to_owned()
                } else {
                    format!("{cpu:.2}")
                },
            );
        }
    }

    /// What the stack, authentication, the limiter and retrieval add, and the overload.
    fn write_overheads(&self, out: &mut String) {
        for (target, overhead) in &self.overhead_p50_ms {
            let _ = writeln!(out, "overhead at c=1 ({target}, p50): {overhead:.3} ms");
        }
        if let Some(added) = self.auth_overhead_p50_ms {
            let _ = writeln!(
                out,
                "authentication added {added:.3} ms at p50 (chat c=1 with a key vs {TRUST_CASE}; budget 0.1 ms)"
            );
        }
        if let Some(added) = self.limiter_overhead_p50_ms {
            let _ = writeln!(
                out,
                "the rate limiter added {added:.3} ms at p50 (chat c=1 vs {NO_LIMITER_CASE}; budget 0.1 ms)"
            );
        }
        if let Some(added) = self.retrieval_overhead_p50_ms {
            let _ = writeln!(
                out,
                "retrieval added {added:.3} ms at p50 (chat c=1 vs {NO_RETRIEVAL_CASE}; target: none, it runs beside the filter)"
            );
        }
        if let (Some(ratio), Some(shed)) = (self.overload_p99_ratio, self.overload_shed_share) {
            let _ = writeln!(
                out,
                "at 4x overload the admitted requests' p99 is {ratio:.2}x its value at the cap (budget 2x); {:.0}% shed with 503",
                shed * 100.0
            );
        }
    }

    /// CPU per process at c=32, and each process's peak memory.
    fn write_resources(&self, out: &mut String) {
        if let Some(case) = self.cases.iter().find(|case| case.name == "chat c=32") {
            let _ = writeln!(out, "cpu seconds per 1000 chats at c=32, by process:");
            for (process, seconds) in &case.cpu_seconds_per_1000 {
                let _ = writeln!(out, "  {process:<12} {seconds:.3}");
            }
        }
        for (title, rss) in [
            ("peak RSS under load (MiB)", &self.peak_rss_mib),
            ("RSS idle after the load (MiB)", &self.idle_rss_mib),
        ] {
            if rss.is_empty() {
                continue;
            }
            let _ = writeln!(out, "{title}:");
            for (process, mib) in rss {
                let _ = writeln!(out, "  {process:<12} {mib:.1}");
            }
            let _ = writeln!(out, "  {:<12} {:.1}", "stack", stack_rss_mib(rss));
        }
    }

    /// A bar chart of throughput per case, with p99 written on each bar.
    pub fn svg(&self) -> String {
        let cases: Vec<&CaseResult> = self
            .cases
            .iter()
            .filter(|case| case.concurrency > 1)
            .collect();
        let max = cases
            .iter()
            .map(|case| case.requests_per_second)
            .fold(1.0, f64::max);
        let (width, row) = (760.0, 26.0);
        let height = 40.0 + row * cases.len() as f64;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"10\" y=\"20\" font-size=\"14\">requests/s (p99 ms) - commit {} on {} cores</text>\n",
            self.commit, self.cores
        );
        for (index, case) in cases.iter().enumerate() {
            let y = 32.0 + row * index as f64;
            let bar = (case.requests_per_second / max) * 420.0;
            let colour = match case.target.as_str() {
                "upstream" => "#9aa5b1",
                "stream" | "v1 stream" => "#2f9e44",
                _ => "#1c64f2",
            };
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{:.0}\">{}</text><rect x=\"230\" y=\"{y:.0}\" width=\"{bar:.1}\" height=\"18\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{:.0}\">{:.0} ({:.1})</text>",
                y + 13.0,
                case.name,
                236.0 + bar,
                y + 13.0,
                case.requests_per_second,
                case.p99_ms
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

pub(crate) fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Every service's and the first gateway's memory together, in MiB: the whole stack as
/// one deployment runs it (the bench runs several gateways side by side).
fn stack_rss_mib(rss: &BTreeMap<String, f64>) -> f64 {
    rss.iter()
        .filter(|(process, _)| !process.starts_with("gateway-") || *process == "gateway-1")
        .map(|(_, mib)| mib)
        .sum()
}
