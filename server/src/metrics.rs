//! Counters, gauges and one histogram, rendered in the Prometheus text format at
//! `GET /metrics`. Plain atomics: every update is one relaxed add on a hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the publish-to-emit latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The hub's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Subscriber sockets connected now.
    pub connections: AtomicI64,
    /// Subscriber sockets ever connected.
    pub connections_total: AtomicU64,
    /// Connections refused at authentication.
    pub auth_failures_total: AtomicU64,
    /// Notifications stored.
    pub publishes_total: AtomicU64,
    /// Publishes answered from an idempotency key.
    pub publish_duplicates_total: AtomicU64,
    /// Publishes refused by the rate limit.
    pub rate_limited_total: AtomicU64,
    /// Live notifications handed to sockets.
    pub deliveries_total: AtomicU64,
    /// Live notifications a socket could not take (it fell behind and is caught up).
    pub lagged_total: AtomicU64,
    /// Catch-up batches sent.
    pub catch_up_batches_total: AtomicU64,
    /// Notifications sent in catch-up batches.
    pub catch_up_notifications_total: AtomicU64,
    /// Catch-ups from a cursor at the head, answered without reading the store.
    pub catch_ups_up_to_date_total: AtomicU64,
    /// Whether this hub is linked to other nodes through Redis (the two Redis metrics
    /// are rendered only then).
    pub redis_linked: AtomicBool,
    /// Whether Redis answers with every channel subscribed.
    pub redis_up: AtomicBool,
    /// Times the link to Redis was lost.
    pub redis_outages_total: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Records one publish-to-emit latency.
    pub fn observe_publish_to_emit(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "belfry_connections",
            "gauge",
            "Subscriber sockets connected now.",
            self.connections.load(Relaxed).to_string(),
        );
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "belfry_connections_total",
                "Subscriber sockets ever connected.",
                &self.connections_total,
            ),
            (
                "belfry_auth_failures_total",
                "Connections refused at authentication.",
                &self.auth_failures_total,
            ),
            (
                "belfry_publishes_total",
                "Notifications stored.",
                &self.publishes_total,
            ),
            (
                "belfry_publish_duplicates_total",
                "Publishes answered from an idempotency key.",
                &self.publish_duplicates_total,
            ),
            (
                "belfry_rate_limited_total",
                "Publishes refused by the rate limit.",
                &self.rate_limited_total,
            ),
            (
                "belfry_deliveries_total",
                "Live notifications handed to sockets.",
                &self.deliveries_total,
            ),
            (
                "belfry_lagged_total",
                "Live notifications a slow socket could not take (it is caught up instead).",
                &self.lagged_total,
            ),
            (
                "belfry_catch_up_batches_total",
                "Catch-up batches sent.",
                &self.catch_up_batches_total,
            ),
            (
                "belfry_catch_up_notifications_total",
                "Notifications sent in catch-up batches.",
                &self.catch_up_notifications_total,
            ),
            (
                "belfry_catch_ups_up_to_date_total",
                "Catch-ups from a cursor at the head, answered without reading the store.",
                &self.catch_ups_up_to_date_total,
            ),
        ];
        for (name, help, value) in counters {
            metric(name, "counter", help, value.load(Relaxed).to_string());
        }
        if self.redis_linked.load(Relaxed) {
            metric(
                "belfry_redis_link_up",
                "gauge",
                "1 while Redis, which links the hub nodes, answers with every channel subscribed; 0 otherwise.",
                u8::from(self.redis_up.load(Relaxed)).to_string(),
            );
            metric(
                "belfry_redis_outages_total",
                "counter",
                "Times the link to Redis was lost.",
                self.redis_outages_total.load(Relaxed).to_string(),
            );
        }
        let name = "belfry_publish_to_emit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from receiving a publish to handing it to the sockets.\n# TYPE {name} histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = Metrics::default();
        m.observe_publish_to_emit(Duration::from_micros(300));
        m.observe_publish_to_emit(Duration::from_millis(30));
        m.publishes_total.fetch_add(2, Relaxed);
        let text = m.render();
        assert!(text.contains("belfry_publishes_total 2"));
        assert!(text.contains("belfry_publish_to_emit_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("belfry_publish_to_emit_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("belfry_publish_to_emit_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("belfry_publish_to_emit_seconds_count 2"));
    }
}
