//! The scenarios, each a function from a running system (and its sizes) to the figures it
//! measured, plus what they share: the fleet of subscribers, waiting, CPU accounting.

pub mod catchup;
pub mod connect;
pub mod desktop;
pub mod fanout;
pub mod held;
pub mod idle;
pub mod soak;
pub mod storm;
pub mod targeted;

use anyhow::bail;
pub use belfry_bench::Signer;
use belfry_bench::client::Target;
use belfry_bench::pool::{Pool, PoolConfig};
use belfry_bench::procfs;
use belfry_bench::system::System;
use belfry_testkit::Publisher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Publishes `count` notifications, each `body`, with `workers` publishers at once, as
/// fast as the system answers; fails on the first refusal.
pub async fn publish_many(
    publisher: &Publisher,
    body: serde_json::Value,
    count: usize,
    workers: usize,
) -> anyhow::Result<()> {
    publish_with(publisher, count, workers, move |_| body.clone()).await
}

/// Publishes `count` notifications, the `i`th `body(i)`, with `workers` publishers at
/// once, as fast as the system answers; fails on the first refusal.
pub async fn publish_with(
    publisher: &Publisher,
    count: usize,
    workers: usize,
    body: impl Fn(usize) -> serde_json::Value + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let body = Arc::new(body);
    let next = Arc::new(AtomicUsize::new(0));
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (p, next, body) = (publisher.clone(), next.clone(), body.clone());
        running.spawn(async move {
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    return Ok::<_, String>(());
                }
                p.try_publish(body(i)).await?;
            }
        });
    }
    while let Some(r) = running.join_next().await {
        r?.map_err(|e| anyhow::anyhow!("publish refused: {e}"))?;
    }
    Ok(())
}

/// Subscribers to add to a pool: `devices` per user, spread over loopback source
/// addresses (and over the nodes of a system of several, in turn), each from cursor 0.
pub struct Fleet {
    hubs: Vec<SocketAddr>,
    tokens: Vec<String>,
    devices: usize,
    sources: Vec<IpAddr>,
    /// How the subscribers connect and reconnect.
    pub config: PoolConfig,
}

impl Fleet {
    /// Users `{prefix}0..{prefix}{users}`, `devices` each, for up to `most` connections.
    pub fn new(
        system: &System,
        signer: &Signer,
        prefix: &str,
        users: usize,
        devices: usize,
        most: usize,
    ) -> Fleet {
        Fleet::over(
            system.addrs().to_vec(),
            signer,
            (0..users).map(|u| format!("{prefix}{u}")),
            devices,
            sources(most),
        )
    }

    /// The users `users`, `devices` each, connection `i` to `hubs[i % hubs.len()]` from
    /// `sources[i % sources.len()]`.
    pub fn over(
        hubs: Vec<SocketAddr>,
        signer: &Signer,
        users: impl Iterator<Item = String>,
        devices: usize,
        sources: Vec<IpAddr>,
    ) -> Fleet {
        Fleet {
            hubs,
            tokens: users.map(|u| signer.token(&u)).collect(),
            devices: devices.max(1),
            sources,
            config: PoolConfig::default(),
        }
    }

    /// The targets of connections `from..to`.
    pub fn targets(&self, from: usize, to: usize) -> Vec<(Target, Option<u64>)> {
        (from..to)
            .map(|i| {
                let target = Target {
                    hub: self.hubs[i % self.hubs.len()],
                    token: self.tokens[(i / self.devices) % self.tokens.len()].clone(),
                    source: Some(self.sources[i % self.sources.len()]),
                };
                (target, Some(0))
            })
            .collect()
    }

    /// Adds subscribers until the pool has `to`, `step` at a time, each step waiting
    /// until all are up to date (connected and caught up).
    pub async fn grow(&self, pool: &mut Pool, to: usize, step: usize) -> anyhow::Result<()> {
        while pool.len() < to {
            let from = pool.len();
            pool.add(self.targets(from, (from + step).min(to)), &self.config);
            let up = wait_for("connections", Duration::from_secs(120), || {
                pool.up_to_date() as usize >= pool.len()
            })
            .await;
            if let Err(e) = up {
                bail!(
                    "{e}: {} of {} up to date, {} connected; ended: {}",
                    pool.up_to_date(),
                    pool.len(),
                    pool.connected(),
                    pool.counters.endings()
                );
            }
        }
        Ok(())
    }
}

/// The most connections one loopback source address carries. Each takes a port of the
/// address (bound before connecting), and the kernel's search for a free one grows with
/// the ports in use: perf showed a load generator with 16,000 connections on one address
/// spending most of its time in `bind` (`inet_bhash2_conflict`), blocking its runtime
/// long enough for pongs to be late and healthy connections to time out.
pub const PER_SOURCE: usize = 4_000;

/// Loopback source addresses for `connections`, one per [`PER_SOURCE`], starting at
/// `127.0.0.2`.
pub fn sources(connections: usize) -> Vec<IpAddr> {
    sources_from(Ipv4Addr::new(127, 0, 0, 2), connections)
}

/// Loopback source addresses for `connections`, one per [`PER_SOURCE`], from `first` up.
pub fn sources_from(first: Ipv4Addr, connections: usize) -> Vec<IpAddr> {
    let n = connections.div_ceil(PER_SOURCE).max(1);
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(first) + i as u32)))
        .collect()
}

/// Raises the open-file limit for `connections` (plus slack), or says why it cannot.
pub fn room_for(connections: usize) -> anyhow::Result<()> {
    let limit = procfs::raise_nofile(connections as u64 + 2_000);
    if (limit as usize) < connections + 1_000 {
        bail!(
            "the open-file limit is {limit}; {connections} connections need more (run as root, or raise the hard limit)"
        );
    }
    Ok(())
}

/// The most connections one process may hold here (the hard open-file limit, less
/// slack for the hub's own files and the store).
pub fn most_connections() -> usize {
    let limit = procfs::raise_nofile(1_000_000);
    (limit as usize).saturating_sub(1_000)
}

/// Polls `done` every 10 ms for up to `limit`.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// CPU used by the load generator and the system over a span, as a share of one core.
pub struct CpuSpan {
    start: Instant,
    me: Duration,
    system: Option<Duration>,
}

/// CPU shares over a span, in percent of one core.
pub struct CpuUse {
    /// The load generator (this process).
    pub generator: f64,
    /// The system under test, when its process is known.
    pub system: Option<f64>,
}

impl CpuSpan {
    /// Starts counting now.
    pub fn start(system: &System) -> Self {
        Self {
            start: Instant::now(),
            me: procfs::cpu_time(std::process::id()).unwrap_or_default(),
            system: system.cpu_time(),
        }
    }

    /// The shares since the start.
    pub fn finish(&self, system: &System) -> CpuUse {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        let me = procfs::cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.me);
        CpuUse {
            generator: me.as_secs_f64() * 100.0 / wall,
            system: system
                .cpu_time()
                .zip(self.system)
                .map(|(now, then)| now.saturating_sub(then).as_secs_f64() * 100.0 / wall),
        }
    }
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "load generator CPU {:.0} %", self.generator)?;
        if let Some(s) = self.system {
            write!(f, ", system CPU {s:.0} %")?;
        }
        Ok(())
    }
}

/// Parses `10s`, `2m`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "ms" => Ok(Duration::from_millis(n)),
        _ => Err(format!("unknown unit in {s} (use ms, s or m)")),
    }
}
