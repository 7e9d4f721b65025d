//! Fan-out: `n` subscribers, publishes to everyone (`all`). First single publishes, one
//! at a time: the time until the last subscriber holds it. Then a stream of them at a
//! fixed rate: deliveries per second and their latency, open loop.

use super::{CpuSpan, Fleet, Signer, room_for, wait_for};
use belfry_bench::latency::{self, Latencies};
use belfry_bench::pool::Pool;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sizes.
pub struct Fanout {
    /// Subscribers.
    pub subscribers: usize,
    /// Single publishes measured one after the other.
    pub singles: usize,
    /// Publishes in the stream.
    pub stream: usize,
    /// Stream publishes per second.
    pub rate: u32,
}

const S: &str = "fanout";

pub async fn run(
    system: &System,
    signer: &Signer,
    sizes: &Fanout,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = sizes.subscribers;
    room_for(n)?;
    let latencies = Arc::new(Latencies::new());
    let fleet = Fleet::new(system, signer, "fan", n, 1, n);
    let mut pool = Pool::measuring(latencies.clone());
    fleet.grow(&mut pool, n, 2_000).await?;
    let publisher = system.publisher();

    // Single publishes: the median of the times until the last subscriber has it.
    let mut lasts = Vec::new();
    let mut median_run = None;
    for _ in 0..sizes.singles {
        latencies.reset();
        let due = latency::now_micros();
        publisher
            .try_publish(json!({"to": ["all"], "title": latency::title(due), "body": "fan-out"}))
            .await
            .map_err(|e| anyhow::anyhow!("publish refused: {e}"))?;
        wait_for(
            "every subscriber to hold it",
            Duration::from_secs(60),
            || latencies.count() as usize >= n,
        )
        .await?;
        let summary = latencies.summary();
        println!("{S}: {} | one publish to {n}: {summary}", out.system);
        lasts.push((summary.max_ms, summary, latencies.cdf(50)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    lasts.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((last, summary, cdf)) = lasts.get(lasts.len() / 2).cloned() {
        median_run = Some(summary);
        out.figure(
            S,
            &format!(
                "one publish: time until all {n} have it (median of {})",
                sizes.singles
            ),
            "ms",
            last,
            Better::Lower,
        );
        out.line(
            "fanout-cdf",
            cdf.into_iter().map(|(ms, q)| (ms, q * 100.0)).collect(),
        );
    }
    if let Some(s) = median_run {
        out.figure(
            S,
            "one publish: median delivery",
            "ms",
            s.p50_ms,
            Better::Lower,
        );
    }

    // A stream, open loop.
    latencies.reset();
    let cpu = CpuSpan::start(system);
    let started = Instant::now();
    let first_due = latency::now_micros();
    let interval = Duration::from_secs(1) / sizes.rate.max(1);
    // Refused publishes (an overloaded system may answer 5xx or not in time) are
    // reported, and only accepted ones are expected.
    let mut refused = 0_usize;
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..sizes.stream {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let due = first_due + (interval * i as u32).as_micros() as u64;
        let p = publisher.clone();
        inflight.spawn(async move {
            p.try_publish(json!({"to": ["all"], "title": latency::title(due), "body": "fan-out"}))
                .await
        });
    }
    while let Some(r) = inflight.join_next().await {
        if !matches!(r, Ok(Ok(_))) {
            refused += 1;
        }
    }
    let expected = (sizes.stream - refused) * n;
    let delivered = wait_for("the stream's deliveries", Duration::from_secs(120), || {
        latencies.count() as usize >= expected
    })
    .await;
    let took = started.elapsed();
    let used = cpu.finish(system);
    let summary = latencies.summary();
    pool.stop().await;
    delivered?;
    println!("{S}: {} | stream: {summary}", out.system);
    out.figure(
        S,
        &format!(
            "stream of {} at {}/s: deliveries per second",
            sizes.stream, sizes.rate
        ),
        "1/s",
        expected as f64 / took.as_secs_f64(),
        Better::Higher,
    );
    out.figure(
        S,
        "stream: p50 latency",
        "ms",
        summary.p50_ms,
        Better::Lower,
    );
    out.figure(
        S,
        "stream: p99 latency",
        "ms",
        summary.p99_ms,
        Better::Lower,
    );
    out.figure(
        S,
        "stream: max latency",
        "ms",
        summary.max_ms,
        Better::Lower,
    );
    out.figure(
        S,
        "stream: load generator CPU",
        "% of a core",
        used.generator,
        Better::Neither,
    );
    out.note(
        S,
        format!(
            "stream: {expected} deliveries in {:.2} s, {refused} publishes refused; {used}",
            took.as_secs_f64()
        ),
    );
    Ok(())
}
