//! Reconnect storm: `n` clients connected and up to date, the system killed (SIGKILL)
//! and started again at once; every client reconnects on its own (jittered backoff from
//! 100 ms, doubling to 2 s) and catches up from its cursor. The time from the kill until
//! all are back and up to date, and how many never came back within the limit.

use super::{Fleet, Signer, room_for};
use belfry_bench::pool::Pool;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use std::time::{Duration, Instant};

const S: &str = "storm";

pub async fn run(
    system: &mut System,
    signer: &Signer,
    n: usize,
    limit: Duration,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    room_for(n)?;
    let fleet = Fleet::new(system, signer, "storm", n, 1, n);
    let mut pool = Pool::empty();
    fleet.grow(&mut pool, n, 2_000).await?;
    let connects_before = pool
        .counters
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);

    let killed = Instant::now();
    system.kill().await;
    system.restart().await?;
    let restarted = killed.elapsed();
    let mut timeline = vec![(0.0, n as f64)];
    let mut all_back = None;
    let mut lowest = n as u64;
    while killed.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let up = pool.up_to_date();
        lowest = lowest.min(up);
        timeline.push((killed.elapsed().as_secs_f64(), up as f64));
        // "Back" only counts once the outage was seen by the clients.
        if up as usize >= n && lowest < n as u64 {
            all_back = Some(killed.elapsed());
            break;
        }
    }
    let up = pool.up_to_date() as usize;
    let reconnects = pool
        .counters
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
        - connects_before;
    pool.stop().await;
    out.figure(
        S,
        &format!("time until all {n} are back and caught up"),
        "ms",
        all_back.map_or(f64::NAN, belfry_bench::latency::ms),
        Better::Lower,
    );
    out.figure(
        S,
        &format!("clients not back after {} s", limit.as_secs()),
        "clients",
        n.saturating_sub(up) as f64,
        Better::Lower,
    );
    out.line("storm", timeline);
    out.note(
        S,
        format!(
            "the restarted process listened {:.0} ms after the kill; {reconnects} reconnects",
            belfry_bench::latency::ms(restarted)
        ),
    );
    Ok(())
}
