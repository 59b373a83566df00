//! The soak report as text: its sections (a title, a header and rows each) laid out as
//! aligned columns for the terminal or as markdown tables.

use std::fmt::Write as _;

use super::SoakReport;

/// One table of the report: a title, a header and rows.
type Section = (String, Vec<String>, Vec<Vec<String>>);

fn owned(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|cell| (*cell).to_owned()).collect()
}

fn ms(value: f64) -> String {
    format!("{value:.1}")
}

fn slope(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |value| format!("{value:+.0}"))
}

fn series(value: Option<usize>) -> String {
    value.map_or("-".to_owned(), |value| value.to_string())
}

impl SoakReport {
    /// The report's sections, in the order they print.
    fn sections(&self) -> Vec<Section> {
        let mut sections = vec![
            self.checks_section(),
            self.latency_section(),
            self.phases_section(),
            self.memory_section(),
            self.scrapes_section(),
        ];
        if !self.error_messages.is_empty() {
            sections.push(self.errors_section());
        }
        sections
    }

    fn checks_section(&self) -> Section {
        (
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
        )
    }

    fn latency_section(&self) -> Section {
        let timeline = &self.timeline;
        let (first, last) = (timeline.first_window(), timeline.last_window());
        (
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
        )
    }

    fn phases_section(&self) -> Section {
        (
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
        )
    }

    fn memory_section(&self) -> Section {
        (
            format!(
                "resident memory after the {:.0} s warm-up (slopes in KiB/min)",
                self.timeline.warm_up
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
        )
    }

    fn scrapes_section(&self) -> Section {
        (
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
        )
    }

    fn errors_section(&self) -> Section {
        (
            "errors".to_owned(),
            owned(&["count", "message"]),
            self.error_messages
                .iter()
                .map(|(message, count)| vec![count.to_string(), message.clone()])
                .collect(),
        )
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
