//! The hub's metrics, rendered in the Prometheus text format at `GET /metrics` by
//! metrics-exporter-prometheus. Each hub has a recorder of its own (never the process's
//! global one, so several hubs in one process, as in the tests, keep their own counts);
//! every update is an atomic add on a handle taken once.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use std::time::Duration;

/// Upper bounds of the publish-to-emit latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The name of the publish-to-emit histogram.
const PUBLISH_TO_EMIT: &str = "belfry_publish_to_emit_seconds";

/// The hub's metrics: one handle per series.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Subscriber sockets connected now.
    pub connections: Gauge,
    /// Subscriber sockets ever connected.
    pub connections_total: Counter,
    /// Connections refused at authentication.
    pub auth_failures_total: Counter,
    /// Notifications stored.
    pub publishes_total: Counter,
    /// Publishes answered from an idempotency key.
    pub publish_duplicates_total: Counter,
    /// Publishes refused by the rate limit.
    pub rate_limited_total: Counter,
    /// Live notifications handed to sockets.
    pub deliveries_total: Counter,
    /// Live notifications a slow socket could not take (it is caught up instead).
    pub lagged_total: Counter,
    /// Catch-up batches sent.
    pub catch_up_batches_total: Counter,
    /// Notifications sent in catch-up batches.
    pub catch_up_notifications_total: Counter,
    /// Catch-ups from a cursor at the head, answered without reading the store.
    pub catch_ups_up_to_date_total: Counter,
    /// Batches the store's writer committed (set when /metrics is rendered).
    pub store_commits_total: Counter,
    /// Writes committed together with others of their kind, in one unit (set when
    /// /metrics is rendered).
    pub store_joined_writes_total: Counter,
    /// Health checks that asked the store (the others were answered from the last one).
    pub health_checks_total: Counter,
    publish_to_emit: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A recorder of its own with every series of the hub registered (at zero).
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(PUBLISH_TO_EMIT.into()), &LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str(help),
            );
            let counter = recorder.register_counter(&Key::from_static_name(name), &metadata());
            // Registered at zero, so the series is there before its first event.
            counter.increment(0);
            counter
        };
        let metrics = Self {
            connections_total: counter(
                "belfry_connections_total",
                "Subscriber sockets ever connected.",
            ),
            auth_failures_total: counter(
                "belfry_auth_failures_total",
                "Connections refused at authentication.",
            ),
            publishes_total: counter("belfry_publishes_total", "Notifications stored."),
            publish_duplicates_total: counter(
                "belfry_publish_duplicates_total",
                "Publishes answered from an idempotency key.",
            ),
            rate_limited_total: counter(
                "belfry_rate_limited_total",
                "Publishes refused by the rate limit.",
            ),
            deliveries_total: counter(
                "belfry_deliveries_total",
                "Live notifications handed to sockets.",
            ),
            lagged_total: counter(
                "belfry_lagged_total",
                "Live notifications a slow socket could not take (it is caught up instead).",
            ),
            catch_up_batches_total: counter(
                "belfry_catch_up_batches_total",
                "Catch-up batches sent.",
            ),
            catch_up_notifications_total: counter(
                "belfry_catch_up_notifications_total",
                "Notifications sent in catch-up batches.",
            ),
            catch_ups_up_to_date_total: counter(
                "belfry_catch_ups_up_to_date_total",
                "Catch-ups from a cursor at the head, answered without reading the store.",
            ),
            store_commits_total: counter(
                "belfry_store_commits_total",
                "Write transactions (batches of writes) the store committed.",
            ),
            store_joined_writes_total: counter(
                "belfry_store_joined_writes_total",
                "Writes (publishes) the store committed together with others of their kind, with one set of statements for all.",
            ),
            health_checks_total: counter(
                "belfry_health_checks_total",
                "Health checks that asked the store (the others were answered from the last).",
            ),
            connections: gauge(
                &recorder,
                "belfry_connections",
                "Subscriber sockets connected now.",
            ),
            publish_to_emit: {
                recorder.describe_histogram(
                    KeyName::from_const_str(PUBLISH_TO_EMIT),
                    Some(metrics::Unit::Seconds),
                    SharedString::const_str(
                        "Time from receiving a publish to handing it to the sockets.",
                    ),
                );
                recorder.register_histogram(&Key::from_static_name(PUBLISH_TO_EMIT), &metadata())
            },
            recorder,
            handle,
        };
        metrics.connections.set(0.0);
        metrics
    }

    /// A gauge registered on demand (the Redis link's, which only a linked hub has).
    pub fn gauge(&self, name: &'static str, help: &'static str) -> Gauge {
        let g = gauge(&self.recorder, name, help);
        g.set(0.0);
        g
    }

    /// A counter registered on demand.
    pub fn counter(&self, name: &'static str, help: &'static str) -> Counter {
        self.recorder.describe_counter(
            KeyName::from_const_str(name),
            None,
            SharedString::const_str(help),
        );
        let c = self
            .recorder
            .register_counter(&Key::from_static_name(name), &metadata());
        c.increment(0);
        c
    }

    /// Records one publish-to-emit latency.
    pub fn observe_publish_to_emit(&self, latency: Duration) {
        self.publish_to_emit.record(latency.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histogram's recent samples into its buckets. The exporter keeps every
    /// sample until this runs (or a scrape renders them): without it, a hub nobody scrapes
    /// would grow by a few bytes per publish.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

fn gauge(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) -> Gauge {
    recorder.describe_gauge(
        KeyName::from_const_str(name),
        None,
        SharedString::const_str(help),
    );
    recorder.register_gauge(&Key::from_static_name(name), &metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start_and_the_histogram_is_cumulative() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "belfry_connections",
            "belfry_connections_total",
            "belfry_publishes_total",
            "belfry_catch_ups_up_to_date_total",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("# TYPE belfry_connections gauge"), "{text}");
        assert!(
            text.contains("# HELP belfry_publishes_total Notifications stored."),
            "{text}"
        );
        m.observe_publish_to_emit(Duration::from_micros(300));
        m.observe_publish_to_emit(Duration::from_millis(30));
        m.publishes_total.increment(2);
        m.connections.increment(3.0);
        let text = m.render();
        assert!(text.contains("belfry_publishes_total 2"), "{text}");
        assert!(text.contains("belfry_connections 3"), "{text}");
        assert!(
            text.contains("# TYPE belfry_publish_to_emit_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("belfry_publish_to_emit_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("belfry_publish_to_emit_seconds_bucket{le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("belfry_publish_to_emit_seconds_bucket{le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("belfry_publish_to_emit_seconds_count 2"),
            "{text}"
        );
        // Two hubs in one process keep their own counts.
        assert!(Metrics::new().render().contains("belfry_publishes_total 0"));
    }
}
