//! The systems a scenario runs against: the Belfry hub (the `belfry-server` binary beside
//! this one, on its embedded SQLite store in a fresh directory), the Node.js reference
//! peer (`bench/peer-node`, socket.io 4 the way the tutorials write it), or a hub already
//! running somewhere (`--target URL`). Each is started on loopback, measured through
//! /proc, killed and restarted the same way.

use anyhow::{Context, bail};
use belfry_testkit::{Hub, KEY, Publisher, free_port};
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
    /// The Node.js socket.io peer, started here.
    Node,
    /// A hub already running at this URL (`http://host:port`), with the publish key.
    External { url: String, key: String },
}

impl Kind {
    /// A short name for tables.
    pub fn name(&self) -> &str {
        match self {
            Kind::Belfry => "Belfry",
            Kind::Node => "Node socket.io",
            Kind::External { url, .. } => url,
        }
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
    url: String,
    key: String,
    run: Run,
}

#[derive(Debug)]
enum Run {
    Belfry { hub: Hub, dir: PathBuf },
    Node { child: Option<Child>, port: u16 },
    External { pid: Option<u32> },
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
            Kind::Belfry => {
                let dir = std::env::temp_dir().join(format!(
                    "belfry-bench-{}-{}",
                    std::process::id(),
                    free_port()
                ));
                std::fs::create_dir_all(&dir)?;
                let hub = Hub::start_with(&dir, free_port(), BELFRY_ARGS).await;
                Ok(System {
                    addr: hub.addr(),
                    url: format!("http://{}", hub.addr()),
                    key: KEY.to_owned(),
                    kind,
                    run: Run::Belfry { hub, dir },
                })
            }
            Kind::Node => {
                let port = free_port();
                let child = start_node(port).await?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                Ok(System {
                    addr,
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
                    url: url.trim_end_matches('/').to_owned(),
                    key: key.clone(),
                    kind,
                    run: Run::External { pid },
                })
            }
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process, while it runs here (or as given for an external one).
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Run::Belfry { hub, .. } => hub.pid(),
            Run::Node { child, .. } => child.as_ref().and_then(Child::id),
            Run::External { pid } => *pid,
        }
    }

    /// Its resident memory in KiB, when known.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::procfs::rss_kib(self.pid()?)
    }

    /// Its CPU time so far, when known.
    pub fn cpu_time(&self) -> Option<Duration> {
        crate::procfs::cpu_time(self.pid()?)
    }

    /// A publisher over HTTP.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(&self.url, &self.key)
    }

    /// SIGKILL only (the restart comes separately, to time the outage).
    pub async fn kill(&mut self) {
        match &mut self.run {
            Run::Belfry { hub, .. } => hub.kill().await,
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
            Run::Belfry { hub, .. } => hub.restart().await,
            Run::Node { child, port } => *child = Some(start_node(*port).await?),
            Run::External { .. } => bail!("an external hub cannot be restarted from here"),
        }
        Ok(())
    }

    /// Stops it and removes its store.
    pub async fn stop(mut self) {
        match &mut self.run {
            Run::Belfry { hub, dir } => {
                if hub.pid().is_some() {
                    hub.terminate().await;
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
