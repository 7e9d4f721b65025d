//! Soak: many connections and steady publishing for a long while against the Belfry
//! hub; reports its memory over time and fails if it grows more than the limit after the
//! warm-up, if any notification is lost, or if connections do not all come up.

use super::{Fleet, Signer, room_for, wait_for};
use anyhow::{Context, bail};
use belfry_bench::pool::Pool;
use belfry_bench::procfs;
use belfry_bench::system::{Kind, System};
use belfry_testkit::SECRET;
use rand::Rng;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Subscribers (two devices per user).
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// How long to publish, after every connection is up (e.g. 600s, 10m).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// The first part of `duration` not counted for memory growth.
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    pub warmup: Duration,
    /// Publishes per second (to single users; one in fifty to everyone).
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Largest memory growth after the warm-up, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_growth: f64,
    /// Quick mode for CI: 1,000 connections, 30 s, 10 s warm-up; reports only.
    #[arg(long)]
    pub quick: bool,
}

pub async fn run(mut args: SoakArgs) -> anyhow::Result<()> {
    if args.quick {
        args.connections = 1_000;
        args.duration = Duration::from_secs(30);
        args.warmup = Duration::from_secs(10);
    }
    room_for(args.connections)?;
    let hub = System::start(Kind::Belfry, None).await?;
    let pid = *hub.pids().first().context("hub pid")?;
    let users = args.connections.div_ceil(2);
    let fleet = Fleet::new(
        &hub,
        &Signer::new(SECRET),
        "soak",
        users,
        2,
        args.connections,
    );
    let mut pool = Pool::empty();
    let ramp = Instant::now();
    let me = std::process::id();
    let cpu_before = procfs::cpu_time(me).unwrap_or_default();
    fleet.grow(&mut pool, args.connections, 1_000).await?;
    println!(
        "soak: {} connections up in {:.1} s; hub RSS {} KiB",
        pool.connected(),
        ramp.elapsed().as_secs_f64(),
        procfs::rss_kib(pid).unwrap_or(0)
    );

    let publisher = hub.publisher();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let (mut published, mut expected, mut refused) = (0_u64, 0_u64, 0_u64);
    let mut inflight = tokio::task::JoinSet::new();
    while start.elapsed() < args.duration {
        tokio::select! {
            _ = tick.tick() => {
                let everyone = rand::thread_rng().gen_ratio(1, 50);
                let user = rand::thread_rng().gen_range(0..users);
                let to = if everyone { "all".to_owned() } else { format!("user:soak{user}") };
                let devices = if everyone { args.connections as u64 } else { 2.min(args.connections - user * 2) as u64 };
                let p = publisher.clone();
                inflight.spawn(async move {
                    let body = json!({"to": [to], "title": "soak", "body": "x".repeat(200)});
                    p.try_publish(body).await.map(|_| devices)
                });
            }
            _ = sample.tick() => {
                samples.push((start.elapsed().as_secs_f64(), procfs::rss_kib(pid).unwrap_or(0)));
            }
            Some(done) = inflight.join_next() => {
                match done? {
                    Ok(devices) => { published += 1; expected += devices; }
                    Err(_) => refused += 1,
                }
            }
        }
    }
    while let Some(done) = inflight.join_next().await {
        match done? {
            Ok(devices) => {
                published += 1;
                expected += devices;
            }
            Err(_) => refused += 1,
        }
    }
    let delivered_all = wait_for("deliveries", Duration::from_secs(60), || {
        pool.distinct() >= expected
    })
    .await;
    let held = pool.distinct();
    let connected = pool.connected();
    let subs = pool.stop().await;
    let repeats: u64 = subs.iter().map(|s| s.tally.repeats).sum();
    let cpu = procfs::cpu_time(me)
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    samples.push((
        start.elapsed().as_secs_f64(),
        procfs::rss_kib(pid).unwrap_or(0),
    ));
    hub.stop().await;

    let after_warmup: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= args.warmup.as_secs_f64())
        .map(|(_, r)| *r)
        .collect();
    let baseline = after_warmup.first().copied().unwrap_or(0);
    let peak = after_warmup.iter().copied().max().unwrap_or(0);
    let growth = if baseline > 0 {
        (peak as f64 - baseline as f64) * 100.0 / baseline as f64
    } else {
        0.0
    };
    println!("soak: hub RSS over time (s, KiB): {samples:?}");
    println!(
        "soak: {} connections, {:.0} s, published {published} ({refused} refused), expected deliveries {expected}, \
         held {held}, repeats {repeats}, connected at the end {connected}; hub RSS after warm-up {baseline} KiB, \
         peak {peak} KiB, growth {growth:.2} %; load generator CPU {:.1} s",
        args.connections,
        args.duration.as_secs_f64(),
        cpu.as_secs_f64()
    );
    if delivered_all.is_err() {
        bail!("lost notifications: held {held} of {expected}");
    }
    if refused > 0 {
        bail!("{refused} publishes refused");
    }
    if !args.quick && growth > args.max_growth {
        bail!(
            "hub memory grew {growth:.2} % after the warm-up (limit {} %)",
            args.max_growth
        );
    }
    Ok(())
}
