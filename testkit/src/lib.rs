//! Test support shared by Belfry's suites: the real `belfry-server` binary on a real
//! loopback port (killable with SIGKILL and restartable on the same port and data dir),
//! tokens minted by that binary, publishing over its HTTP API, a TCP proxy that injects
//! network faults, PostgreSQL and Redis servers of the test's own, and a headless desktop
//! (Xvfb, D-Bus, dunst) for the tray app.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod desktop;
mod nginx;
mod proxy;
mod services;

pub use nginx::{Nginx, deploy_dir, nginx_in, site_head};
pub use proxy::FaultProxy;
pub use services::{Postgres, Redis};

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The JWT secret every test hub uses.
pub const SECRET: &str = "belfry-test-secret-0123456789abcdef";
/// The publish key every test hub accepts.
pub const KEY: &str = "bfk_belfry_test_key";
/// The longest any single wait lasts.
pub const WAIT: Duration = Duration::from_secs(30);

/// A binary of the workspace: `$env` if set, else next to the running binary or test
/// (`cargo test --workspace` builds every binary before it runs any test).
pub fn workspace_bin(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // A test runs from target/<profile>/deps, a binary from target/<profile>.
    let dir = exe.parent().unwrap();
    let bin = if dir.join(name).exists() {
        dir.join(name)
    } else {
        dir.parent().unwrap().join(name)
    };
    assert!(
        bin.exists(),
        "{} is missing: build it first (make test does)",
        bin.display()
    );
    bin
}

/// The `belfry-server` binary.
pub fn server_bin() -> PathBuf {
    workspace_bin("belfry-server", "BELFRY_SERVER_BIN")
}

/// A user token for the test secret, minted by `belfry-server token`.
pub fn token(user: &str) -> String {
    let out = std::process::Command::new(server_bin())
        .args([
            "token",
            "--jwt-secret",
            SECRET,
            "--user",
            user,
            "--ttl",
            "1d",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Resident set size of process `pid`, in KiB (`VmRSS` in /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes to a hub with one key. Cheap to clone, so a test can publish from spawned
/// tasks while it watches clients.
#[derive(Debug, Clone)]
pub struct Publisher {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Publisher {
    /// A publisher for the hub at `url` (e.g. `http://127.0.0.1:8080`) with `key`.
    pub fn new(url: &str, key: &str) -> Self {
        Self {
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
            url: url.to_owned(),
            key: key.to_owned(),
        }
    }

    /// Publishes `body`; panics unless 201; returns the id.
    pub async fn publish(&self, body: Value) -> u64 {
        self.try_publish(body)
            .await
            .unwrap_or_else(|e| panic!("publish refused: {e}"))
    }

    /// Publishes `body`; the id, or why not (a status and body, or a transport error),
    /// for tests that publish while the hub may be going away.
    pub async fn try_publish(&self, body: Value) -> Result<u64, String> {
        let r = self
            .http
            .post(format!("{}/api/v1/notifications", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| e.to_string())?;
        if status != 201 {
            return Err(format!("{status}: {body}"));
        }
        body["id"]
            .as_u64()
            .ok_or_else(|| format!("no id in {body}"))
    }

    /// Publishes a title to one target.
    pub async fn publish_to(&self, target: &str, title: &str) -> u64 {
        self.publish(json!({"to": [target], "title": title})).await
    }

    /// The hub's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric's value (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// The hub as a child process on a fixed port.
#[derive(Debug)]
pub struct Hub {
    /// Its port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    dir: PathBuf,
    /// Extra arguments to `belfry-server serve`.
    args: Vec<String>,
    child: Option<Child>,
    /// A client for the tests' own requests.
    pub http: reqwest::Client,
}

impl Hub {
    /// Starts a hub on `dir` and a free port.
    pub async fn start(dir: &Path) -> Hub {
        Self::start_on(dir, free_port()).await
    }

    /// Starts a hub on `dir` and `port`.
    pub async fn start_on(dir: &Path, port: u16) -> Hub {
        Self::start_with(dir, port, &[]).await
    }

    /// Starts a hub on `dir` and `port` with extra `serve` arguments (kept for restarts),
    /// e.g. `["--ping-interval", "1s"]`.
    pub async fn start_with(dir: &Path, port: u16, args: &[&str]) -> Hub {
        let mut hub = Hub {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        };
        hub.restart().await;
        hub
    }

    /// Starts the process (again) on the same port and data dir; retries while the
    /// port is still held by a hub just killed.
    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut child = Command::new(server_bin())
                .args(["serve", "--publish-key", KEY, "--jwt-secret", SECRET])
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(&self.dir)
                .args(&self.args)
                // `BELFRY_TEST_LOG` (a RUST_LOG filter) to see more of what the hub says.
                .env(
                    "RUST_LOG",
                    std::env::var("BELFRY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut listening = false;
            while let Ok(Ok(Some(line))) = tokio::time::timeout(WAIT, lines.next_line()).await {
                if line.starts_with("belfry-server listening on ") {
                    listening = true;
                    break;
                }
            }
            if listening {
                // Keep draining stdout so the hub never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                // The line comes once the port is bound; the hub answers once its store,
                // and its links to other nodes, are ready.
                self.wait_ready(deadline).await;
                return;
            }
            let _ = child.kill().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `/healthz` answers 200.
    async fn wait_ready(&mut self, deadline: tokio::time::Instant) {
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("the hub exited while starting: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its listening address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Its resident memory in KiB, while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// SIGKILL: no goodbye, no flush.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("stops in time")
            .unwrap()
    }

    /// A publisher with the test key.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(&self.url, KEY)
    }

    /// Publishes with the test key; panics unless 201; returns the id.
    pub async fn publish(&self, body: Value) -> u64 {
        self.publisher().publish(body).await
    }

    /// Publishes a title to one target.
    pub async fn publish_to(&self, target: &str, title: &str) -> u64 {
        self.publisher().publish_to(target, title).await
    }

    /// GET a JSON document with a bearer credential.
    pub async fn get(&self, path: &str, bearer: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POST JSON with a bearer credential; returns the status.
    pub async fn post(&self, path: &str, bearer: &str, body: Value) -> u16 {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A metric's value from `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> u64 {
        self.publisher().metric(name).await
    }

    /// Whether everything `user_token` can list (first page) is marked read.
    pub async fn all_read(&self, user_token: &str) -> bool {
        let page = self.get("/api/v1/notifications", user_token).await;
        page["notifications"]
            .as_array()
            .is_some_and(|list| list.iter().all(|n| n["read"] == true))
    }

    /// Every id `user` can list, following `next` (ascending).
    pub async fn all_ids(&self, user_token: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get(
                    &format!("/api/v1/notifications?after={after}&limit=500"),
                    user_token,
                )
                .await;
            ids.extend(
                page["notifications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["id"].as_u64().unwrap()),
            );
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => return ids,
            }
        }
    }
}

/// Polls `check` every 100 ms until it yields `Some`, and returns that; panics after
/// [`WAIT`] naming `what` (tests wait for effects that travel through processes and
/// sockets, never for a fixed time).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
