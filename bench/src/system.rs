//! The systems a scenario runs against: the Belfry hub (the `belfry-server` binary beside
//! this one, on its embedded SQLite store in a fresh directory), one hub on PostgreSQL,
//! several hub nodes on one PostgreSQL and one Redis, the Node.js reference peer
//! (`bench/peer-node`, socket.io 4 the way the tutorials write it), or a hub already
//! running somewhere (`--target URL`). Each is started on loopback, measured through
//! /proc (a system of several nodes: their sum), killed and restarted the same way. The
//! PostgreSQL server is the bench's own, with PostgreSQL's durable defaults (every commit
//! fsynced before it is answered).

use anyhow::{Context, bail};
use belfry_testkit::{Hub, KEY, Postgres, Publisher, Redis, free_port};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The Belfry hub, started here.
    Belfry,
    /// One Belfry hub on PostgreSQL, started here.
    BelfryPostgres,
    /// Several Belfry hub nodes on one PostgreSQL and one Redis, started here; clients
    /// spread over them, publishes go to the first.
    Cluster(usize),
    /// The Node.js socket.io peer, started here.
    Node,
    /// A hub already running at this URL (`http://host:port`), with the publish key.
    External { url: String, key: String },
}

impl Kind {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            Kind::Belfry => "Belfry".into(),
            Kind::BelfryPostgres => "Belfry on PostgreSQL".into(),
            Kind::Cluster(n) => format!("Belfry, {n} nodes"),
            Kind::Node => "Node socket.io".into(),
            Kind::External { url, .. } => url.clone(),
        }
    }

    /// Whether it is Belfry started here (on any store, with any number of nodes).
    pub fn is_belfry(&self) -> bool {
        matches!(self, Kind::Belfry | Kind::BelfryPostgres | Kind::Cluster(_))
    }

    /// Whether it keeps what it accepted across a restart (the peer's queue is memory).
    pub fn durable(&self) -> bool {
        !matches!(self, Kind::Node)
    }
}

/// A running system under test.
#[derive(Debug)]
pub struct System {
    /// Which one.
    pub kind: Kind,
    addr: SocketAddr,
    /// Every node's address (one but for a cluster).
    addrs: Vec<SocketAddr>,
    url: String,
    key: String,
    run: Run,
}

#[derive(Debug)]
enum Run {
    Belfry {
        hubs: Vec<Hub>,
        dir: PathBuf,
        /// The shared store and fan-out, when not SQLite.
        services: Option<Box<(Postgres, Option<Redis>)>>,
    },
    Node {
        child: Option<Child>,
        port: u16,
    },
    External {
        pid: Option<u32>,
    },
}

/// The Belfry hub's settings for benchmarks: its defaults, but for the per-key publish
/// rate limit (1,000/s with bursts of 2,000 by default), lifted because the scenarios
/// publish faster than that from one key on purpose and the Node peer has no limit.
pub const BELFRY_ARGS: &[&str] = &["--publish-rate", "1000000", "--publish-burst", "1000000"];

/// Where the Node peer lives: `BELFRY_PEER_NODE`, else `bench/peer-node` in the source
/// tree this was built from.
pub fn peer_dir() -> PathBuf {
    std::env::var_os("BELFRY_PEER_NODE").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peer-node")),
        PathBuf::from,
    )
}

impl System {
    /// Starts `kind` on a free loopback port (an external hub is only looked up; `pid`
    /// lets its memory be read).
    pub async fn start(kind: Kind, pid: Option<u32>) -> anyhow::Result<System> {
        match kind {
            Kind::Belfry | Kind::BelfryPostgres | Kind::Cluster(_) => {
                let dir = std::env::temp_dir().join(format!(
                    "belfry-bench-{}-{}",
                    std::process::id(),
                    free_port()
                ));
                std::fs::create_dir_all(&dir)?;
                let nodes = match kind {
                    Kind::Cluster(n) => n.max(1),
                    _ => 1,
                };
                let services = match kind {
                    Kind::Belfry => None,
                    Kind::BelfryPostgres => Some(Box::new((Postgres::start_durable().await, None))),
                    _ => Some(Box::new((
                        Postgres::start_durable().await,
                        Some(Redis::start().await),
                    ))),
                };
                let mut args: Vec<String> = BELFRY_ARGS.iter().map(|a| (*a).to_owned()).collect();
                if let Some((postgres, redis)) = services.as_deref() {
                    args.extend(["--database-url".into(), postgres.database().await]);
                    if let Some(redis) = redis {
                        args.extend(["--redis-url".into(), redis.url()]);
                    }
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut hubs = Vec::with_capacity(nodes);
                for node in 0..nodes {
                    let data = dir.join(format!("node-{node}"));
                    std::fs::create_dir_all(&data)?;
                    hubs.push(Hub::start_with(&data, free_port(), &args).await);
                }
                let addrs: Vec<SocketAddr> = hubs.iter().map(Hub::addr).collect();
                Ok(System {
                    addr: addrs[0],
                    url: format!("http://{}", addrs[0]),
                    addrs,
                    key: KEY.to_owned(),
                    kind,
                    run: Run::Belfry {
                        hubs,
                        dir,
                        services,
                    },
                })
            }
            Kind::Node => {
                let port = free_port();
                let child = start_node(port).await?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                Ok(System {
                    addr,
                    addrs: vec![addr],
                    url: format!("http://{addr}"),
                    key: KEY.to_owned(),
                    kind,
                    run: Run::Node {
                        child: Some(child),
                        port,
                    },
                })
            }
            Kind::External { ref url, ref key } => {
                let hostport = url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
                let addr = hostport
                    .to_socket_addrs()
                    .with_context(|| format!("resolving {hostport}"))?
                    .next()
                    .with_context(|| format!("no address for {hostport}"))?;
                Ok(System {
                    addr,
                    addrs: vec![addr],
                    url: url.trim_end_matches('/').to_owned(),
                    key: key.clone(),
                    kind,
                    run: Run::External { pid },
                })
            }
        }
    }

    /// Where clients connect (a cluster's first node).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every node's address, in order (one but for a cluster).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Its processes, while they run here (or as given for an external one).
    pub fn pids(&self) -> Vec<u32> {
        match &self.run {
            Run::Belfry { hubs, .. } => hubs.iter().filter_map(Hub::pid).collect(),
            Run::Node { child, .. } => child.as_ref().and_then(Child::id).into_iter().collect(),
            Run::External { pid } => pid.iter().copied().collect(),
        }
    }

    /// Its resident memory in KiB (every node's together), when known.
    pub fn rss_kib(&self) -> Option<u64> {
        let pids = self.pids();
        let each: Option<Vec<u64>> = pids.iter().map(|&p| crate::procfs::rss_kib(p)).collect();
        each.filter(|e| !e.is_empty()).map(|e| e.iter().sum())
    }

    /// Its CPU time so far (every node's together), when known.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pids = self.pids();
        let each: Option<Vec<Duration>> =
            pids.iter().map(|&p| crate::procfs::cpu_time(p)).collect();
        each.filter(|e| !e.is_empty()).map(|e| e.iter().sum())
    }

    /// A publisher over HTTP.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(&self.url, &self.key)
    }

    /// SIGKILL only (the restart comes separately, to time the outage).
    pub async fn kill(&mut self) {
        match &mut self.run {
            Run::Belfry { hubs, .. } => {
                for hub in hubs {
                    hub.kill().await;
                }
            }
            Run::Node { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.start_kill();
                    let _ = c.wait().await;
                }
            }
            Run::External { .. } => {}
        }
    }

    /// Starts it again after [`System::kill`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match &mut self.run {
            Run::Belfry { hubs, .. } => {
                for hub in hubs {
                    hub.restart().await;
                }
            }
            Run::Node { child, port } => *child = Some(start_node(*port).await?),
            Run::External { .. } => bail!("an external hub cannot be restarted from here"),
        }
        Ok(())
    }

    /// Stops it and removes its store.
    pub async fn stop(mut self) {
        match &mut self.run {
            Run::Belfry {
                hubs,
                dir,
                services,
            } => {
                for hub in hubs {
                    if hub.pid().is_some() {
                        hub.terminate().await;
                    }
                }
                if let Some((mut postgres, redis)) = services.take().map(|s| *s) {
                    if let Some(mut redis) = redis {
                        redis.stop().await;
                    }
                    postgres.stop().await;
                }
                let _ = std::fs::remove_dir_all(dir);
            }
            Run::Node { .. } => self.kill().await,
            Run::External { .. } => {}
        }
    }
}

/// `node server.js` in the peer's directory on `port`, once it says it listens.
async fn start_node(port: u16) -> anyhow::Result<Child> {
    let dir = peer_dir();
    if !dir.join("node_modules").exists() {
        bail!(
            "the Node peer's packages are missing: run `npm ci` in {} (make bench does)",
            dir.display()
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("SECRET", belfry_testkit::SECRET)
            .env("PUBLISH_KEY", KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node (is Node.js installed?)")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let mut listening = false;
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await
        {
            if line.starts_with("listening on ") {
                listening = true;
                break;
            }
        }
        if listening {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(child);
        }
        let _ = child.kill().await;
        // The port may still be held by a peer just killed.
        if tokio::time::Instant::now() > deadline {
            bail!("the Node peer never started on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
