//! Catch-up: `count` notifications published to a user while none of their devices is
//! connected, then one device connects: the time from its first byte until it holds all
//! of them, in order, none twice.

use super::{Fleet, Signer, publish_many, wait_for};
use belfry_bench::pool::Pool;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use serde_json::json;
use std::time::{Duration, Instant};

const S: &str = "catchup";

pub async fn run(
    system: &System,
    signer: &Signer,
    count: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    // Publish while the user is away, 32 at a time.
    let publisher = system.publisher();
    publish_many(
        &publisher,
        json!({"to": ["user:away0"], "title": "while away", "body": "x".repeat(100)}),
        count,
        32,
    )
    .await?;

    let fleet = Fleet::new(system, signer, "away", 1, 1, 1);
    let mut pool = Pool::empty();
    let started = Instant::now();
    pool.add(fleet.targets(0, 1), &fleet.config);
    let held = wait_for("the catch-up", Duration::from_secs(60), || {
        pool.distinct() as usize >= count && pool.up_to_date() == 1
    })
    .await;
    let took = started.elapsed();
    let subs = pool.stop().await;
    held?;
    let tally = &subs[0].tally;
    out.figure(
        S,
        &format!("time until all {count} missed are held"),
        "ms",
        belfry_bench::latency::ms(took),
        Better::Lower,
    );
    out.figure(
        S,
        "notifications caught up per second",
        "1/s",
        count as f64 / took.as_secs_f64(),
        Better::Higher,
    );
    out.note(
        S,
        format!(
            "held {} distinct, {} repeats, {} out of order{}",
            tally.distinct,
            tally.repeats,
            tally.out_of_order,
            if system.kind.durable() {
                " (from the durable store)"
            } else {
                " (from the peer's in-memory queue: gone if it restarts)"
            }
        ),
    );
    if tally.out_of_order > 0 || tally.repeats > 0 {
        anyhow::bail!("the catch-up repeated or reordered notifications");
    }
    Ok(())
}
