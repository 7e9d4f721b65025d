//! Targeted publish: `n` subscribers (one per user); publishes over HTTP to one random
//! user each, open loop at fixed rates (each publish is timed from when it was due, so a
//! system that falls behind pays for the queue), then closed loop as fast as it answers:
//! accepted (for Belfry: durably stored) publishes per second at saturation.
//!
//! On several nodes every publish goes to the first node and only to users connected to
//! another one, so every delivery crosses nodes (through the shared store's feed).

use super::{CpuSpan, Fleet, Signer, room_for, wait_for};
use belfry_bench::latency::{self, Latencies};
use belfry_bench::pool::Pool;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use belfry_testkit::Publisher;
use rand::Rng;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Sizes.
#[derive(Debug, Clone)]
pub struct Targeted {
    /// Subscribers, one per user.
    pub subscribers: usize,
    /// Publish rates per second, each held for `duration`.
    pub rates: Vec<u32>,
    /// How long each rate (and the saturation run) lasts.
    pub duration: Duration,
    /// Publishers in flight at once in the saturation run.
    pub concurrency: usize,
}

const S: &str = "targeted";

/// Publishes refused or never answered count against the run. Beyond this many in
/// flight the load generator skips a due publish and counts it as not sent (the system
/// is saturated): each one in flight is an HTTP connection, and without a bound a
/// saturated system would be buried under connections (it ran the hub out of file
/// descriptors at 5,000/s).
const MAX_IN_FLIGHT: usize = 1_000;

/// The users a publish may go to: user `tgt{u}` is connection `u` of the fleet, on node
/// `u % nodes`, and publishes go to node 0. With one node, every user; with several,
/// only those on the other nodes.
#[derive(Debug, Clone, Copy)]
struct Recipients {
    users: usize,
    nodes: usize,
}

impl Recipients {
    /// Fails on several nodes with fewer than two users: nobody would be on another node.
    fn of(system: &System, users: usize) -> anyhow::Result<Recipients> {
        let nodes = system.addrs().len().max(1);
        anyhow::ensure!(
            nodes == 1 || users >= 2,
            "{users} subscribers on {nodes} nodes: none on a node other than the one published to"
        );
        Ok(Recipients { users, nodes })
    }

    fn pick(self, rng: &mut impl Rng) -> usize {
        if self.nodes == 1 {
            return rng.gen_range(0..self.users);
        }
        // The `k`th user not on node 0: `k / (nodes - 1)` whole rounds of the nodes, then
        // one of the others within the round.
        let remote = self.users - self.users.div_ceil(self.nodes);
        let k = rng.gen_range(0..remote.max(1));
        k / (self.nodes - 1) * self.nodes + 1 + k % (self.nodes - 1)
    }
}

fn body(to: Recipients, due: u64) -> serde_json::Value {
    let user = to.pick(&mut rand::thread_rng());
    json!({"to": [format!("user:tgt{user}")], "title": latency::title(due), "body": "x".repeat(100)})
}

pub async fn run(
    system: &System,
    signer: &Signer,
    sizes: &Targeted,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let n = sizes.subscribers;
    room_for(n)?;
    let latencies = Arc::new(Latencies::new());
    let fleet = Fleet::new(system, signer, "tgt", n, 1, n);
    let mut pool = Pool::measuring(latencies.clone());
    fleet.grow(&mut pool, n, 2_000).await?;
    let publisher = system.publisher();
    let to = Recipients::of(system, n)?;
    if to.nodes > 1 {
        out.note(
            S,
            format!(
                "every publish to node 1 of {}, each to a user connected to another node: \
                 every delivery crosses nodes",
                to.nodes
            ),
        );
    }
    for &rate in &sizes.rates {
        latencies.reset();
        open_loop(
            system,
            &publisher,
            &latencies,
            to,
            rate,
            sizes.duration,
            out,
        )
        .await?;
    }
    latencies.reset();
    saturate(system, &publisher, &latencies, to, sizes, out).await?;
    pool.stop().await;
    Ok(())
}

async fn open_loop(
    system: &System,
    publisher: &Publisher,
    latencies: &Latencies,
    to: Recipients,
    rate: u32,
    duration: Duration,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let total = (u64::from(rate) * duration.as_millis() as u64 / 1000) as usize;
    let interval = Duration::from_secs(1) / rate.max(1);
    let cpu = CpuSpan::start(system);
    let started = Instant::now();
    let first_due = latency::now_micros();
    let (mut ok, mut refused, mut skipped) = (0_usize, 0_usize, 0_usize);
    let mut inflight = tokio::task::JoinSet::new();
    for i in 0..total {
        let offset = interval * i as u32;
        tokio::time::sleep_until((started + offset).into()).await;
        while let Some(r) = inflight.try_join_next() {
            if matches!(r, Ok(Ok(_))) {
                ok += 1
            } else {
                refused += 1
            }
        }
        if inflight.len() >= MAX_IN_FLIGHT {
            skipped += 1;
            continue;
        }
        let due = first_due + offset.as_micros() as u64;
        let p = publisher.clone();
        let b = body(to, due);
        inflight.spawn(async move { p.try_publish(b).await });
    }
    while let Some(r) = inflight.join_next().await {
        if matches!(r, Ok(Ok(_))) {
            ok += 1
        } else {
            refused += 1
        }
    }
    let answered = started.elapsed();
    let delivered = wait_for("the deliveries", Duration::from_secs(60), || {
        latencies.count() as usize >= ok
    })
    .await;
    let used = cpu.finish(system);
    let s = latencies.summary();
    println!("{S}: {} | {rate}/s: {s}", out.system);
    let at = format!("{rate}/s");
    out.figure(
        S,
        &format!("{at}: p50 latency"),
        "ms",
        s.p50_ms,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("{at}: p99 latency"),
        "ms",
        s.p99_ms,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("{at}: p99.9 latency"),
        "ms",
        s.p999_ms,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("{at}: max latency"),
        "ms",
        s.max_ms,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("{at}: publishes answered per second"),
        "1/s",
        ok as f64 / answered.as_secs_f64(),
        Better::Higher,
    );
    // Publishes the load generator skipped (too many in flight) or that failed are not
    // in the percentiles: say how many, beside them.
    out.figure(
        S,
        &format!("{at}: due publishes not sent ({MAX_IN_FLIGHT} in flight) or refused"),
        "publishes",
        (skipped + refused) as f64,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("{at}: load generator CPU"),
        "% of a core",
        used.generator,
        Better::Neither,
    );
    out.line(&format!("targeted-{rate}"), latencies.spectrum());
    out.note(
        S,
        format!(
            "{at}: {ok} accepted, {refused} refused or unanswered, {skipped} not sent \
             ({MAX_IN_FLIGHT} already in flight), {} delivered; {used}",
            latencies.count()
        ),
    );
    if delivered.is_err() {
        out.note(
            S,
            format!(
                "{at}: {} of {ok} accepted publishes never arrived",
                ok - latencies.count() as usize
            ),
        );
    }
    Ok(())
}

async fn saturate(
    system: &System,
    publisher: &Publisher,
    latencies: &Latencies,
    to: Recipients,
    sizes: &Targeted,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let cpu = CpuSpan::start(system);
    let started = Instant::now();
    let deadline = started + sizes.duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..sizes.concurrency {
        let (p, ok, refused) = (publisher.clone(), ok.clone(), refused.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                match p.try_publish(body(to, latency::now_micros())).await {
                    Ok(_) => ok.fetch_add(1, Relaxed),
                    Err(_) => refused.fetch_add(1, Relaxed),
                };
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let took = started.elapsed();
    let ok = ok.load(Relaxed);
    let _ = wait_for("the deliveries", Duration::from_secs(60), || {
        latencies.count() >= ok
    })
    .await;
    let used = cpu.finish(system);
    let s = latencies.summary();
    let what = if system.kind.durable() {
        "saturation: durable publishes per second"
    } else {
        "saturation: publishes per second (the peer stores nothing)"
    };
    // One metric name for both systems, so they share a row; the note says which stores.
    out.figure(
        S,
        "saturation: accepted publishes per second",
        "1/s",
        ok as f64 / took.as_secs_f64(),
        Better::Higher,
    );
    out.figure(S, "saturation: p99 latency", "ms", s.p99_ms, Better::Lower);
    out.figure(
        S,
        "saturation: load generator CPU",
        "% of a core",
        used.generator,
        Better::Neither,
    );
    out.note(
        S,
        format!(
            "{what}: {ok} in {:.1} s with {} publishers in flight, {} refused; {s}; {used}",
            took.as_secs_f64(),
            sizes.concurrency,
            refused.load(Relaxed)
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_several_nodes_every_recipient_is_on_another_node_and_each_is_reached() {
        let mut rng = rand::thread_rng();
        for (users, nodes) in [(10, 1), (10, 3), (9, 3), (11, 3), (100, 6), (2, 2)] {
            let to = Recipients { users, nodes };
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..20_000 {
                let u = to.pick(&mut rng);
                assert!(u < users, "{u} of {users}");
                if nodes > 1 {
                    assert_ne!(u % nodes, 0, "user {u} is on node 0 of {nodes}");
                }
                seen.insert(u);
            }
            let expected = (0..users).filter(|u| nodes == 1 || u % nodes != 0).count();
            assert_eq!(seen.len(), expected, "{users} users on {nodes} nodes");
        }
    }
}
