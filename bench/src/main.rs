//! `belfry-bench`: load scenarios against a Belfry hub this command starts itself (the
//! release `belfry-server` next to it), on loopback.
//!
//! `belfry-bench soak`: many connections and steady publishing for a long while; reports
//! the hub's memory over time and fails if it grows more than 5 % after the warm-up, if
//! any notification is lost, or if connections do not all come up.

use anyhow::{Context, bail};
use belfry_bench::client::Target;
use belfry_bench::pool::{Pool, PoolConfig};
use belfry_bench::procfs;
use belfry_testkit::{Hub, free_port};
use clap::{Parser, Subcommand};
use rand::Rng;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "belfry-bench", about = "Load scenarios for the Belfry hub")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Connections held and steady publishing for a while; hub memory must stay flat.
    Soak(SoakArgs),
    /// Hub memory with idle connections held, at several counts; bytes per connection
    /// from the slope.
    Idle(IdleArgs),
}

#[derive(clap::Args, Debug)]
struct IdleArgs {
    /// Connection counts to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    steps: Vec<usize>,
    /// How long to let the hub settle at each step before reading its memory.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    settle: Duration,
    /// Quick mode for CI: 500 and 1,000 connections.
    #[arg(long)]
    quick: bool,
}

#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// Subscribers (two devices per user).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long to publish, after every connection is up (e.g. 600s, 10m).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// The first part of `duration` not counted for memory growth.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    warmup: Duration,
    /// Publishes per second (to single users; one in fifty to everyone).
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Largest memory growth after the warm-up, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth: f64,
    /// Quick mode for CI: 1,000 connections, 30 s, 10 s warm-up; reports only.
    #[arg(long)]
    quick: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("unknown unit in {s} (use ms, s or m)")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Soak(args) => soak(args).await,
        Scenario::Idle(args) => idle(args).await,
    }
}

/// Subscribers to add to a pool: two devices per user, spread over loopback source
/// addresses, each from cursor 0.
struct Fleet {
    hub: std::net::SocketAddr,
    tokens: Vec<String>,
    sources: Vec<IpAddr>,
    config: PoolConfig,
}

impl Fleet {
    fn new(hub: &Hub, prefix: &str, users: usize, most: usize) -> Fleet {
        Fleet {
            hub: hub.addr(),
            tokens: (0..users)
                .map(|u| belfry_bench::token(&format!("{prefix}{u}")))
                .collect(),
            sources: sources(most),
            config: PoolConfig::default(),
        }
    }

    /// Adds subscribers until the pool has `to`, 1,000 at a time, each step waiting
    /// until all are connected.
    async fn grow(&self, pool: &mut Pool, to: usize) -> anyhow::Result<()> {
        while pool.len() < to {
            let from = pool.len();
            let targets = (from..(from + 1_000).min(to))
                .map(|i| {
                    let target = Target {
                        hub: self.hub,
                        token: self.tokens[(i / 2) % self.tokens.len()].clone(),
                        source: Some(self.sources[i % self.sources.len()]),
                    };
                    (target, Some(0))
                })
                .collect();
            pool.add(targets, &self.config);
            wait_for("connections", Duration::from_secs(60), || {
                pool.connected() as usize >= pool.len()
            })
            .await?;
        }
        Ok(())
    }
}

/// Loopback source addresses, one per 20,000 connections.
fn sources(connections: usize) -> Vec<IpAddr> {
    let n = connections.div_ceil(20_000).max(1);
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

async fn soak(mut args: SoakArgs) -> anyhow::Result<()> {
    if args.quick {
        args.connections = 1_000;
        args.duration = Duration::from_secs(30);
        args.warmup = Duration::from_secs(10);
    }
    let limit = procfs::raise_nofile(args.connections as u64 + 2_000);
    if (limit as usize) < args.connections + 1_000 {
        bail!(
            "the open-file limit is {limit}; {} connections need more",
            args.connections
        );
    }
    let dir = tempfile_dir()?;
    let mut hub = Hub::start_with(&dir, free_port(), &[]).await;
    let pid = hub.pid().context("hub pid")?;
    let users = args.connections.div_ceil(2);
    let fleet = Fleet::new(&hub, "soak", users, args.connections);
    let mut pool = Pool::empty();
    let ramp = Instant::now();
    let me = std::process::id();
    let cpu_before = procfs::cpu_time(me).unwrap_or_default();
    fleet.grow(&mut pool, args.connections).await?;
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
    hub.terminate().await;

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
    let _ = std::fs::remove_dir_all(&dir);
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

async fn idle(mut args: IdleArgs) -> anyhow::Result<()> {
    if args.quick {
        args.steps = vec![500, 1_000];
        args.settle = Duration::from_secs(1);
    }
    let most = args.steps.iter().copied().max().context("no steps")?;
    let limit = procfs::raise_nofile(most as u64 + 2_000);
    if (limit as usize) < most + 1_000 {
        bail!(
            "the open-file limit is {limit}; {most} connections need more (run as root, or raise the hard limit)"
        );
    }
    let dir = tempfile_dir()?;
    let mut hub = Hub::start_with(&dir, free_port(), &[]).await;
    let pid = hub.pid().context("hub pid")?;
    tokio::time::sleep(args.settle).await;
    let base = procfs::rss_kib(pid).unwrap_or(0);
    let fleet = Fleet::new(&hub, "idle", most.div_ceil(2), most);
    let mut pool = Pool::empty();
    let me = std::process::id();
    let mut points = vec![(0_usize, base)];
    println!(
        "idle: connections | hub RSS KiB | KiB over the empty hub | per connection | load generator RSS KiB"
    );
    println!(
        "idle: {:>11} | {base:>11} | {:>22} | {:>14} | {:>22}",
        0,
        0,
        "-",
        procfs::rss_kib(me).unwrap_or(0)
    );
    for &step in &args.steps {
        let started = Instant::now();
        fleet.grow(&mut pool, step).await?;
        let ramp = started.elapsed();
        tokio::time::sleep(args.settle).await;
        let rss = procfs::rss_kib(pid).unwrap_or(0);
        let over = rss.saturating_sub(base);
        println!(
            "idle: {:>11} | {rss:>11} | {over:>22} | {:>11.1} KB | {:>22}   (connected {}, ramp {:.1} s)",
            step,
            over as f64 * 1024.0 / step as f64 / 1000.0,
            procfs::rss_kib(me).unwrap_or(0),
            pool.connected(),
            ramp.as_secs_f64()
        );
        points.push((step, rss));
    }
    let slope_kib = slope(&points);
    println!(
        "idle: slope {:.1} KB per connection ({} B) over {} points",
        slope_kib * 1024.0 / 1000.0,
        (slope_kib * 1024.0).round(),
        points.len()
    );
    let connected = pool.connected();
    pool.stop().await;
    hub.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    if connected as usize != most {
        bail!("only {connected} of {most} connections held");
    }
    Ok(())
}

/// Least-squares slope of `y` (KiB) over `x` (connections).
fn slope(points: &[(usize, u64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(sx, sy), &(x, y)| {
        (sx + x as f64, sy + y as f64)
    });
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), &(x, y)| {
        let dx = x as f64 - mx;
        (num + dx * (y as f64 - my), den + dx * dx)
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("belfry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Polls `done` every 100 ms for up to `limit`.
async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
