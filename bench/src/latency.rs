//! Publish-to-receive latency, measured open loop: every publish carries the instant it
//! was due (in its title, which both Belfry and the Node peer pass through unchanged),
//! and every subscriber records how long after that instant it received it, into one
//! HdrHistogram shared by the whole pool.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The title prefix of a timed publish.
const PREFIX: &str = "due:";

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The title of a publish due at `due_micros`.
pub fn title(due_micros: u64) -> String {
    format!("{PREFIX}{due_micros}")
}

/// When the notification titled `title` was due, if it is a timed one.
pub fn due(title: &str) -> Option<u64> {
    title.strip_prefix(PREFIX)?.parse().ok()
}

/// Latencies recorded by many subscribers at once.
#[derive(Debug)]
pub struct Latencies {
    hist: Mutex<Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty record, 1 µs to 10 minutes at three significant figures.
    pub fn new() -> Self {
        Self {
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"),
            ),
        }
    }

    /// Records a notification received now that was due at `due_micros`.
    pub fn record_since(&self, due_micros: u64) {
        self.record_micros(now_micros().saturating_sub(due_micros));
    }

    /// Records one latency measured elsewhere.
    pub fn record(&self, latency: std::time::Duration) {
        self.record_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    fn record_micros(&self, micros: u64) {
        if let Ok(mut h) = self.hist.lock() {
            h.saturating_record(micros.max(1));
        }
    }

    /// What was recorded, as `(microseconds, count)` pairs, ascending: to carry a
    /// record from one process to another ([`Latencies::add`] takes it back).
    pub fn recorded(&self) -> Vec<(u64, u64)> {
        self.hist.lock().map_or_else(
            |_| Vec::new(),
            |h| {
                h.iter_recorded()
                    .map(|v| (v.value_iterated_to(), v.count_at_value()))
                    .collect()
            },
        )
    }

    /// Records `count` latencies of `micros` each (from [`Latencies::recorded`]).
    pub fn add(&self, micros: u64, count: u64) {
        if let Ok(mut h) = self.hist.lock() {
            h.saturating_record_n(micros.max(1), count);
        }
    }

    /// Forgets everything recorded (between the steps of a scenario).
    pub fn reset(&self) {
        if let Ok(mut h) = self.hist.lock() {
            h.reset();
        }
    }

    /// Recorded so far.
    pub fn count(&self) -> u64 {
        self.hist.lock().map_or(0, |h| h.len())
    }

    /// The percentiles of what was recorded.
    pub fn summary(&self) -> Summary {
        let h = self.hist.lock().map(|h| h.clone()).ok();
        let Some(h) = h.filter(|h| !h.is_empty()) else {
            return Summary::default();
        };
        let ms = |micros: u64| micros as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    /// Latency by percentile for plotting: `(nines, ms)` where nines is
    /// `-log10(1 - q)` (1 = p90, 2 = p99, 3 = p99.9), from p50 to p99.99.
    pub fn spectrum(&self) -> Vec<(f64, f64)> {
        let Ok(h) = self.hist.lock() else {
            return Vec::new();
        };
        if h.is_empty() {
            return Vec::new();
        }
        [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999]
            .iter()
            .map(|&q: &f64| (-(1.0 - q).log10(), h.value_at_quantile(q) as f64 / 1000.0))
            .collect()
    }

    /// The share of deliveries made by each time since they were due: `(ms, fraction)`,
    /// ascending, for plotting a fan-out over time.
    pub fn cdf(&self, points: usize) -> Vec<(f64, f64)> {
        let Ok(h) = self.hist.lock() else {
            return Vec::new();
        };
        if h.is_empty() {
            return Vec::new();
        }
        (0..=points)
            .map(|i| {
                let q = i as f64 / points as f64;
                (h.value_at_quantile(q) as f64 / 1000.0, q)
            })
            .collect()
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Default, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Summary {
    /// Recorded deliveries.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} deliveries)",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// `d` in milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_carry_the_due_instant() {
        assert_eq!(due(&title(1_234_567)), Some(1_234_567));
        assert_eq!(due("a plain title"), None);
        assert_eq!(due("due:soon"), None);
    }

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let l = Latencies::new();
        assert_eq!(l.summary().count, 0);
        let now = now_micros();
        // Due 10 ms ago (99 times) and 1 s ago (once).
        for _ in 0..99 {
            l.record_since(now - 10_000);
        }
        l.record_since(now - 1_000_000);
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert!((10.0..12.0).contains(&s.p50_ms), "{s}");
        assert!(s.max_ms >= 1000.0, "{s}");
        let cdf = l.cdf(10);
        assert_eq!(cdf.len(), 11);
        assert!(cdf.windows(2).all(|w| w[0].0 <= w[1].0));
        let copy = Latencies::new();
        for (micros, n) in l.recorded() {
            copy.add(micros, n);
        }
        assert_eq!(copy.summary().count, 100);
        assert_eq!(copy.summary().p50_ms, s.p50_ms);
        assert_eq!(copy.summary().max_ms, s.max_ms);
        l.reset();
        assert_eq!(l.count(), 0);
    }
}
