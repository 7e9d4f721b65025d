//! Connect rate: `n` clients start at once; each opens a WebSocket, does the Engine.IO
//! and Socket.IO handshakes with its token and an empty cursor, and receives its (empty)
//! catch-up. Connects per second = `n` / the time until the last is up to date. Then the
//! same with `n` other users who each missed one notification while offline (published
//! before the clock starts): each connect then reads it from the store (the Node peer:
//! from its offline queue) before it is up to date.

use super::{CpuSpan, Fleet, Signer, publish_with, room_for, wait_for};
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
    connect_all(system, signer, n, 0, out).await?;
    connect_all(system, signer, n, 1, out).await
}

/// `n` clients of new users, each of whom missed `missed` notifications, connecting at
/// once.
async fn connect_all(
    system: &System,
    signer: &Signer,
    n: usize,
    missed: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let prefix = format!("connect{missed}-");
    let fleet = Fleet::new(system, signer, &prefix, n, 1, n);
    if missed > 0 {
        let users = prefix.clone();
        publish_with(&system.publisher(), n * missed, 64, move |i| {
            serde_json::json!({"to": [format!("user:{users}{}", i % n)], "title": format!("missed {i}")})
        })
        .await?;
    }
    // With something to catch up, each connect ends once it holds it.
    let expected = (n * missed) as u64;
    // Tokens are signed before the clock starts; the clients start together.
    let targets = fleet.targets(0, n);
    let mut pool = Pool::empty();
    let cpu = CpuSpan::start(system);
    let started = Instant::now();
    pool.add(targets, &fleet.config);
    let mut half = None;
    let done = wait_for("every client up to date", Duration::from_secs(120), || {
        let up = pool.up_to_date() as usize;
        let held = pool
            .counters
            .distinct
            .load(std::sync::atomic::Ordering::Relaxed);
        let up = if held >= expected { up } else { up.min(n - 1) };
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
    let held = pool
        .counters
        .distinct
        .load(std::sync::atomic::Ordering::Relaxed);
    pool.stop().await;
    done?;
    let (what, with) = if missed == 0 {
        (format!("connects per second ({n} at once)"), String::new())
    } else {
        (
            format!("connects per second, {missed} missed each ({n} at once)"),
            format!(", {missed} missed each"),
        )
    };
    out.figure(
        S,
        &what,
        "1/s",
        n as f64 / took.as_secs_f64(),
        Better::Higher,
    );
    out.figure(
        S,
        &format!("time until the last is up to date{with}"),
        "ms",
        belfry_bench::latency::ms(took),
        Better::Lower,
    );
    if let Some(h) = half {
        out.figure(
            S,
            &format!("time until half are up to date{with}"),
            "ms",
            belfry_bench::latency::ms(h),
            Better::Lower,
        );
    }
    out.figure(
        S,
        &format!("load generator CPU{with}"),
        "% of a core",
        used.generator,
        Better::Neither,
    );
    let holding = if missed == 0 {
        String::new()
    } else {
        format!(", holding {held} of {expected} missed")
    };
    out.note(
        S,
        format!("{up} up to date{with}{holding}, {failed} refused; {used}"),
    );
    Ok(())
}
