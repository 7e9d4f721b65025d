//! Connect rate: `n` clients start at once; each opens a WebSocket, does the Engine.IO
//! and Socket.IO handshakes with its token and an empty cursor, and receives its (empty)
//! catch-up. Connects per second = `n` / the time until the last is up to date.

use super::{CpuSpan, Fleet, Signer, room_for, wait_for};
use belfry_bench::pool::Pool;
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use std::time::{Duration, Instant};

const S: &str = "connect";

pub async fn run(
    system: &System,
    signer: &Signer,
    n: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    room_for(n)?;
    let fleet = Fleet::new(system, signer, "connect", n, 1, n);
    // Tokens are signed before the clock starts; the clients start together.
    let targets = fleet.targets(0, n);
    let mut pool = Pool::empty();
    let cpu = CpuSpan::start(system);
    let started = Instant::now();
    pool.add(targets, &fleet.config);
    let mut half = None;
    let done = wait_for("every client up to date", Duration::from_secs(120), || {
        let up = pool.up_to_date() as usize;
        if half.is_none() && up * 2 >= n {
            half = Some(started.elapsed());
        }
        up >= n
    })
    .await;
    let took = started.elapsed();
    let used = cpu.finish(system);
    let up = pool.up_to_date();
    let failed = pool
        .counters
        .refused
        .load(std::sync::atomic::Ordering::Relaxed);
    pool.stop().await;
    done?;
    out.figure(
        S,
        &format!("connects per second ({n} at once)"),
        "1/s",
        n as f64 / took.as_secs_f64(),
        Better::Higher,
    );
    out.figure(
        S,
        "time until the last is up to date",
        "ms",
        belfry_bench::latency::ms(took),
        Better::Lower,
    );
    if let Some(h) = half {
        out.figure(
            S,
            "time until half are up to date",
            "ms",
            belfry_bench::latency::ms(h),
            Better::Lower,
        );
    }
    out.figure(
        S,
        "load generator CPU",
        "% of a core",
        used.generator,
        Better::Neither,
    );
    out.note(S, format!("{up} up to date, {failed} refused; {used}"));
    Ok(())
}
