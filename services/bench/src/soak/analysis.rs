//! The soak's arithmetic and its pass marks: the run's timeline (warm-up, the first and
//! last latency windows, when the scraper starts), least-squares slopes of memory, and
//! percentiles. Pure functions, tested below.

use serde::Serialize;

/// A leak shows as memory that keeps growing after warm-up. Memory is flat when its
/// least-squares slope, fitted over a span after warm-up, is under the largest of these
/// three:
///
/// - 1 % of the process's resident memory per minute: glibc's allocator keeps freed
///   memory in per-thread arenas and hands it back lazily, so a healthy process's RSS
///   wanders by a few hundred KiB to a few MiB around its working set; 1 %/min lets that
///   wander without letting a leak through: over the 8 minutes fitted of a 10-minute run
///   it is 8 % growth, which a steady process does not show.
/// - 512 KiB a minute, for the small services (a 10 MiB token service's 1 % is
///   100 KiB/min, less than one arena step): 4 MiB over the 8 minutes. At the 100-150
///   requests a second this machine serves, that is about 60 bytes a request: a leak of
///   one small allocation per request shows.
/// - 2 MiB over the whole span ([`WARM_ALLOWANCE_KIB`]), for short runs: in the first
///   minute after warm-up every process still grows by 0.3-1 MiB (arenas, pools and
///   bounded caches still filling; measured here, flattening to about 100 KiB/min by the
///   fifth minute), which a one-minute run would otherwise read as a leak of
///   1 MiB/min. Over the 8 minutes of the full run this term is 256 KiB/min and never
///   decides.
pub const FLAT_SHARE_PER_MINUTE: f64 = 0.01;
/// See [`FLAT_SHARE_PER_MINUTE`].
pub const FLAT_FLOOR_KIB_PER_MINUTE: f64 = 512.0;
/// See [`FLAT_SHARE_PER_MINUTE`].
pub const WARM_ALLOWANCE_KIB: f64 = 2048.0;

/// The last window's percentiles may be this much above the first window's.
pub const LATENCY_TOLERANCE: f64 = 0.20;

/// ...or this many milliseconds above them, whichever is more lenient: with the
/// sub-10 ms latencies of the release build, 20 % is under 2 ms, the size of one time
/// slice of the scheduler when 16 clients, 6 services, Redis and MariaDB share two cores,
/// so one descheduling in the last window would fail a stack that did not degrade.
pub const LATENCY_FLOOR_MS: f64 = 2.0;

/// The shortest soak: a warm-up of 10 s and two windows after it.
pub const MIN_SECONDS: f64 = 20.0;

/// The memory fit of a phase is a check only when the phase has at least this long after
/// warm-up: a shorter fit is reported but one allocator step dominates it.
pub const MIN_PHASE_FIT_SECONDS: f64 = 60.0;

/// The shortest latency window judged: a shorter one (16 s of a 60 s run) is reported.
pub const MIN_LATENCY_WINDOW_SECONDS: f64 = 30.0;

/// When each part of a run of `seconds` begins and ends, in seconds from its start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timeline {
    pub seconds: f64,
    /// The first 20 % of the run, at least 10 s: caches, pools, allocator arenas and the
    /// history tables fill; memory and latency before it are not judged.
    pub warm_up: f64,
    /// The length of the first and last latency windows: a minute, or a third of what
    /// follows the warm-up in a shorter run (16 s of a 60 s run).
    pub window: f64,
    /// The scraper runs from half-way to the end; nothing scrapes before.
    pub scrape_from: f64,
}

impl Timeline {
    pub fn new(seconds: f64) -> Self {
        let warm_up = (seconds * 0.2).max(10.0).min(seconds / 2.0);
        Self {
            seconds,
            warm_up,
            window: ((seconds - warm_up) / 3.0).min(60.0),
            scrape_from: seconds / 2.0,
        }
    }

    /// The first window after warm-up.
    pub fn first_window(&self) -> (f64, f64) {
        (self.warm_up, self.warm_up + self.window)
    }

    /// The run's last window.
    pub fn last_window(&self) -> (f64, f64) {
        (self.seconds - self.window, self.seconds)
    }
}

/// The least-squares slope of `points` (seconds, value), per minute; none with fewer than
/// three points or all at one time.
pub fn slope_per_minute(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let count = points.len() as f64;
    let mean_t = points.iter().map(|(t, _)| t).sum::<f64>() / count;
    let mean_v = points.iter().map(|(_, v)| v).sum::<f64>() / count;
    let (covariance, variance) = points.iter().fold((0.0, 0.0), |(cov, var), (t, v)| {
        (
            cov + (t - mean_t) * (v - mean_v),
            var + (t - mean_t) * (t - mean_t),
        )
    });
    (variance > 0.0).then(|| covariance / variance * 60.0)
}

/// The largest slope, in KiB a minute, that is still flat for a process of `kib` fitted
/// over `span_seconds`.
pub fn flat_threshold(kib: f64, span_seconds: f64) -> f64 {
    (kib * FLAT_SHARE_PER_MINUTE)
        .max(FLAT_FLOOR_KIB_PER_MINUTE)
        .max(WARM_ALLOWANCE_KIB * 60.0 / span_seconds.max(1.0))
}

/// Whether a percentile of the last window, `last_ms`, is steady against the first's.
/// One-sided: a faster end is no degradation.
pub fn latency_steady(first_ms: f64, last_ms: f64) -> bool {
    last_ms <= first_ms * (1.0 + LATENCY_TOLERANCE) || last_ms - first_ms <= LATENCY_FLOOR_MS
}

/// The latency percentiles of some requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub requests: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    /// Of these latencies in microseconds (nearest rank); zeros when there are none.
    pub fn of(mut latencies_us: Vec<u64>) -> Self {
        latencies_us.sort_unstable();
        let at = |quantile: f64| {
            if latencies_us.is_empty() {
                return 0.0;
            }
            let rank = ((latencies_us.len() as f64 * quantile).ceil() as usize)
                .clamp(1, latencies_us.len());
            latencies_us[rank - 1] as f64 / 1000.0
        };
        Self {
            requests: latencies_us.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
        }
    }

    /// The three percentiles, named.
    pub fn named(&self) -> [(&'static str, f64); 3] {
        [
            ("p50", self.p50_ms),
            ("p95", self.p95_ms),
            ("p99", self.p99_ms),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_rise_per_minute() {
        let line: Vec<(f64, f64)> = (0..30)
            .map(|i| (f64::from(i) * 2.0, 1000.0 + f64::from(i) * 10.0))
            .collect();
        let slope = slope_per_minute(&line).unwrap_or_default();
        assert!((slope - 300.0).abs() < 1e-9, "{slope}");
    }

    #[test]
    fn a_flat_but_noisy_series_has_a_slope_near_zero() {
        let noisy: Vec<(f64, f64)> = (0..60)
            .map(|i| (f64::from(i), if i % 2 == 0 { 900.0 } else { 1100.0 }))
            .collect();
        let slope = slope_per_minute(&noisy).unwrap_or(f64::MAX);
        assert!(slope.abs() < 200.0, "{slope}");
    }

    #[test]
    fn too_few_points_or_no_time_have_no_slope() {
        assert_eq!(slope_per_minute(&[(0.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(
            slope_per_minute(&[(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]),
            None
        );
    }

    #[test]
    fn the_threshold_is_one_percent_a_minute_half_a_mebibyte_or_two_over_the_span() {
        assert_eq!(flat_threshold(12_000.0, 480.0), FLAT_FLOOR_KIB_PER_MINUTE);
        assert!((flat_threshold(100_000.0, 480.0) - 1000.0).abs() < 1e-9);
        // The one-minute run fits 48 s: 2 MiB over 0.8 min.
        assert!((flat_threshold(12_000.0, 48.0) - 2560.0).abs() < 1e-9);
    }

    #[test]
    fn latency_may_grow_by_a_fifth_or_by_two_milliseconds() {
        assert!(latency_steady(100.0, 119.0));
        assert!(!latency_steady(100.0, 121.0));
        assert!(latency_steady(3.0, 4.9));
        assert!(!latency_steady(3.0, 5.1));
        assert!(latency_steady(100.0, 50.0));
    }

    #[test]
    fn the_ten_minute_run_compares_its_second_and_tenth_minute_after_a_two_minute_warm_up() {
        let ten = Timeline::new(600.0);
        assert_eq!(ten.warm_up, 120.0);
        assert_eq!(ten.first_window(), (120.0, 180.0));
        assert_eq!(ten.last_window(), (540.0, 600.0));
        assert_eq!(ten.scrape_from, 300.0);
        let one = Timeline::new(60.0);
        assert_eq!(one.warm_up, 12.0);
        assert_eq!(one.first_window(), (12.0, 28.0));
        assert_eq!(one.last_window(), (44.0, 60.0));
        let shortest = Timeline::new(MIN_SECONDS);
        assert!(shortest.first_window().1 <= shortest.last_window().0);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let latencies: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let percentiles = Percentiles::of(latencies);
        assert_eq!(percentiles.requests, 100);
        assert_eq!(
            (percentiles.p50_ms, percentiles.p95_ms, percentiles.p99_ms),
            (50.0, 95.0, 99.0)
        );
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }
}
