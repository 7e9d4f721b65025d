//! Fixture for the client core's tests: the real hub (as the built `belfry-server`
//! binary, so it can be killed with SIGKILL and restarted on the same port and data dir),
//! publishing over HTTP, and a started `Device`.
#![allow(dead_code, clippy::unwrap_used)]

use belfry_client::{ClientEvent, ConnectionConfig, ConnectionState, Device, Overrides};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub const SECRET: &str = "client-test-secret-0123456789abcdef";
pub const KEY: &str = "bfk_client_test_key";
pub const WAIT: Duration = Duration::from_secs(20);

/// The `belfry-server` binary: `BELFRY_SERVER_BIN`, or next to this test's own binary
/// (`cargo test --workspace` builds it before running any test).
pub fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BELFRY_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("belfry-server");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p belfry-server` (make test does)",
        bin.display()
    );
    bin
}

pub fn token(user: &str) -> String {
    belfry_server::auth::TokenSigner::new(SECRET).mint(user, None, 3600)
}

pub fn fast_config() -> ConnectionConfig {
    ConnectionConfig {
        connect_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(3),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        auth_retry: Duration::from_secs(60),
    }
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The hub as a child process on a fixed port.
pub struct Hub {
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
    child: Option<Child>,
    pub http: reqwest::Client,
}

impl Hub {
    pub async fn start(dir: &Path) -> Hub {
        Self::start_on(dir, free_port()).await
    }

    pub async fn start_on(dir: &Path, port: u16) -> Hub {
        let mut hub = Hub {
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir: dir.to_owned(),
            child: None,
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
        };
        hub.spawn().await;
        hub
    }

    async fn spawn(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut child = Command::new(server_bin())
                .args(["serve", "--publish-key", KEY, "--jwt-secret", SECRET])
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.port))
                .arg("--data-dir")
                .arg(&self.dir)
                .env("RUST_LOG", "warn")
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
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                return;
            }
            // The port may still be held by the hub just killed: try again shortly.
            let _ = child.kill().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hub never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    /// Starts again on the same port and data dir.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub async fn publish(&self, to: &str, title: &str) -> u64 {
        self.publish_body(json!({"to": [to], "title": title})).await
    }

    pub async fn publish_body(&self, body: Value) -> u64 {
        let r = self
            .http
            .post(format!("{}/api/v1/notifications", self.url))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_u64().unwrap()
    }

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

    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// A device and everything it reported.
pub struct TestDevice {
    pub device: Device,
    pub events: mpsc::Receiver<ClientEvent>,
    /// Every id reported as newly stored, in order (a repeat would be a bug).
    pub stored: Vec<u64>,
}

impl TestDevice {
    pub async fn start(dir: &Path, url: &str, token: &str) -> TestDevice {
        let (device, events) = Device::start(
            dir,
            Overrides {
                server_url: Some(url.to_owned()),
                token: Some(token.to_owned()),
            },
            fast_config(),
        )
        .await
        .unwrap();
        device.disable_popups();
        TestDevice {
            device,
            events,
            stored: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> ClientEvent {
        let ev = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("events open");
        if let ClientEvent::Stored { notifications, .. } = &ev {
            self.stored.extend(notifications.iter().map(|n| n.id));
        }
        ev
    }

    /// Waits until the given state.
    pub async fn until_state(&mut self, state: ConnectionState) -> String {
        if self.device.status().state == state {
            return self.device.status().detail;
        }
        loop {
            if let ClientEvent::Status(s) = self.next().await
                && s.state == state
            {
                return s.detail;
            }
        }
    }

    /// Waits until every id in `ids` was reported stored.
    pub async fn until_stored(&mut self, ids: &BTreeSet<u64>) {
        while !ids.iter().all(|id| self.stored.contains(id)) {
            self.next().await;
        }
    }

    /// Asserts no id was reported twice.
    pub fn assert_no_repeats(&self) {
        let unique: BTreeSet<_> = self.stored.iter().collect();
        assert_eq!(
            unique.len(),
            self.stored.len(),
            "an id was reported twice: {:?}",
            self.stored
        );
    }
}
