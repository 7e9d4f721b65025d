//! Shared fixture: the real hub on a real port (in-process through `run`, or as the
//! built binary for crash tests), a temp data dir, and a Socket.IO subscriber built on
//! rust_socketio that records every event it receives.
#![allow(dead_code, clippy::unwrap_used)]

use belfry_protocol::events::{SyncBatch, Synced};
use belfry_protocol::{Notification, PublishResponse};
use belfry_server::Config;
use belfry_server::auth::TokenSigner;
use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Payload, TransportType};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const SECRET: &str = "integration-test-secret-0123456789";
pub const KEY: &str = "bfk_integration_test_key";
/// The longest any single wait in a test lasts.
pub const WAIT: Duration = Duration::from_secs(15);

/// A hub running in this process on 127.0.0.1:0.
pub struct TestHub {
    pub addr: SocketAddr,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::new(dir, SECRET.into(), vec![KEY.into()]);
    config.prune_interval = Duration::from_millis(200);
    config
}

/// With `BELFRY_TEST_STORE=postgres`, the PostgreSQL database of a hub's data dir: made
/// on first use (and kept in the dir, so a hub restarted on the dir finds its store
/// again) on a server this test binary starts once. That is how the same suites run
/// against both stores (`make test` runs them twice).
async fn postgres_database(dir: &Path) -> Option<String> {
    static SERVER: tokio::sync::OnceCell<belfry_testkit::Postgres> =
        tokio::sync::OnceCell::const_new();
    if std::env::var("BELFRY_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    let file = dir.join("database-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let server = SERVER.get_or_init(belfry_testkit::Postgres::start).await;
    let url = server.database().await;
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

pub fn signer() -> TokenSigner {
    TokenSigner::new(SECRET)
}

pub fn token(user: &str) -> String {
    signer().mint(user, None, 3600)
}

pub fn token_with_topics(user: &str, topics: &[&str]) -> String {
    signer().mint(
        user,
        Some(topics.iter().map(|t| (*t).to_owned()).collect()),
        3600,
    )
}

impl TestHub {
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tune).await
    }

    /// Starts a hub on an existing data dir (to restart on the same store).
    pub async fn start_in(dir: tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> TestHub {
        let mut config = test_config(dir.path());
        config.database_url = postgres_database(dir.path()).await;
        tune(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(belfry_server::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let hub = TestHub {
            addr,
            url: format!("http://{addr}"),
            dir,
            http: reqwest::Client::builder().timeout(WAIT).build().unwrap(),
            stop: Some(stop),
            task: Some(task),
        };
        hub.wait_healthy().await;
        hub
    }

    async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The database URL the hub runs on (`None`: SQLite in its data dir).
    pub fn database_url(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("database-url")).ok()
    }

    /// A second handle on the hub's store, as `belfry-server epoch` or another node opens
    /// it.
    pub async fn open_store(&self) -> belfry_server::store::Store {
        let url = self.database_url();
        let (store, _feed) = belfry_server::store::Store::open(self.dir.path(), url.as_deref())
            .await
            .unwrap();
        store
    }

    /// Makes the store lose its commits after `head`, as a failover to a replica that
    /// lagged does: the notifications are gone, and their ids are issued again.
    pub async fn lose_commits_after(&self, head: i64) {
        use sqlx::Connection as _;
        let url = self.database_url();
        let statements = [
            "DELETE FROM notification_targets WHERE notification_id > $1",
            "DELETE FROM user_state WHERE notification_id > $1",
            "DELETE FROM notifications WHERE id > $1",
            match url {
                None => "UPDATE sqlite_sequence SET seq = $1 WHERE name = 'notifications'",
                Some(_) => "UPDATE notification_head SET id = $1",
            },
        ];
        macro_rules! run_on {
            ($connection:expr) => {{
                let mut c = $connection.await.unwrap();
                for statement in statements {
                    sqlx::query(statement)
                        .bind(head)
                        .execute(&mut c)
                        .await
                        .unwrap();
                }
                c.close().await.unwrap();
            }};
        }
        match url {
            None => {
                let db = self.dir.path().join("belfry.db");
                run_on!(sqlx::SqliteConnection::connect(&format!(
                    "sqlite://{}",
                    db.display()
                )))
            }
            Some(url) => run_on!(sqlx::PgConnection::connect(&url)),
        }
    }

    /// Graceful stop; returns the data dir so a new hub can reopen it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("hub stops in time")
                .unwrap()
                .unwrap();
        }
        let TestHub { dir, .. } = self;
        dir
    }

    /// A publisher with the test key, for publishing from spawned tasks.
    pub fn publisher(&self) -> belfry_testkit::Publisher {
        belfry_testkit::Publisher::new(&self.url, KEY)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.publisher().metrics().await
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    /// Publishes as the test key; panics unless 201.
    pub async fn publish(&self, body: Value) -> PublishResponse {
        let r = self
            .http
            .post(self.api("/notifications"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 201, "publish refused: {text}");
        serde_json::from_str(&text).unwrap()
    }

    pub async fn publish_to(&self, target: &str, title: &str) -> u64 {
        self.publish(json!({"to": [target], "title": title}))
            .await
            .id
    }

    /// `POST /notifications/read` with a user token; returns status and JSON body.
    pub async fn mark_read(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/notifications/read",
            token,
            Some(body),
        )
        .await
    }

    /// `GET /notifications/{id}/receipts` with the publish key; panics unless 200.
    pub async fn receipts(&self, id: u64) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/notifications/{id}/receipts"),
                KEY,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A raw request with a key or token; returns status and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.api(path))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

/// What a subscriber received, in order.
#[derive(Debug, Clone)]
pub enum Event {
    Sync(SyncBatch),
    Synced(Synced),
    Live(Notification),
    Read(Value),
    Subscribed(Value),
    Unsubscribed(Value),
    Open,
    Closed,
    Error(String),
    Other(String, Value),
}

/// A Socket.IO subscriber (rust_socketio, websocket) that records every event.
pub struct Subscriber {
    pub client: Client,
    events: mpsc::UnboundedReceiver<Event>,
}

fn first(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut v) if !v.is_empty() => v.remove(0),
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        _ => Value::Null,
    }
}

pub fn client_builder(url: &str, namespace: &str, auth: Value) -> ClientBuilder {
    ClientBuilder::new(url)
        .namespace(namespace)
        .auth(auth)
        .transport_type(TransportType::Websocket)
        .reconnect(false)
}

/// A client that reads nothing once its first event arrives: its handler never returns,
/// so its connection's buffers and then the hub's fill up. Keep the client alive for as
/// long as it should stay connected.
pub async fn deaf_client(url: &str, auth: Value) -> Client {
    deaf_client_over(url, auth, TransportType::Websocket).await
}

/// [`deaf_client`] over a given transport (long-polling: it stops polling).
pub async fn deaf_client_over(url: &str, auth: Value, transport: TransportType) -> Client {
    client_builder(url, "/", auth)
        .transport_type(transport)
        .on_any(|_event, _payload, _c| std::future::pending::<()>().boxed())
        .connect()
        .await
        .expect("transport connects")
}

impl Subscriber {
    pub async fn connect(url: &str, token: &str, cursor: Option<u64>) -> Subscriber {
        Self::connect_auth(url, json!({"token": token, "cursor": cursor})).await
    }

    pub async fn connect_auth(url: &str, auth: Value) -> Subscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        let on_any = tx.clone();
        let on_error = tx.clone();
        let on_close = tx.clone();
        let on_open = tx;
        let client = client_builder(url, "/", auth)
            .on("close", move |_p, _c: Client| {
                let tx = on_close.clone();
                async move {
                    let _ = tx.send(Event::Closed);
                }
                .boxed()
            })
            .on("open", move |_p, _c: Client| {
                let tx = on_open.clone();
                async move {
                    let _ = tx.send(Event::Open);
                }
                .boxed()
            })
            .on("error", move |p, _c: Client| {
                let tx = on_error.clone();
                async move {
                    let _ = tx.send(Event::Error(first(p).to_string()));
                }
                .boxed()
            })
            .on_any(move |event, payload, _c: Client| {
                let tx = on_any.clone();
                async move {
                    let name = String::from(event);
                    let v = first(payload);
                    let ev = match name.as_str() {
                        "sync" => Event::Sync(serde_json::from_value(v).unwrap()),
                        "synced" => Event::Synced(serde_json::from_value(v).unwrap()),
                        "notification" => Event::Live(serde_json::from_value(v).unwrap()),
                        "read" => Event::Read(v),
                        "subscribed" => Event::Subscribed(v),
                        "unsubscribed" => Event::Unsubscribed(v),
                        _ => Event::Other(name, v),
                    };
                    let _ = tx.send(ev);
                }
                .boxed()
            })
            .connect()
            .await
            .expect("transport connects");
        Subscriber { client, events: rx }
    }

    /// The next event, or panic after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event in time")
            .expect("event stream open")
    }

    /// The next event if one comes within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Option<Event> {
        tokio::time::timeout(d, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until the hub closes the socket (or its reconnect is refused).
    pub async fn until_closed(&mut self) {
        loop {
            if let Event::Closed | Event::Error(_) = self.next().await {
                return;
            }
        }
    }

    /// Waits for the end of a catch-up; returns the epoch it names.
    pub async fn synced_epoch(&mut self) -> String {
        loop {
            if let Event::Synced(synced) = self.next().await {
                return synced.epoch.expect("an epoch");
            }
        }
    }

    /// Waits for the first connection error (a refused handshake).
    pub async fn connect_error(&mut self) -> String {
        loop {
            match self.next().await {
                Event::Error(e) => return e,
                Event::Open => panic!("connected although it should have been refused"),
                _ => {}
            }
        }
    }

    /// Collects catch-up batches until `synced`; returns the ids (in arrival order) and
    /// the head. Live notifications arriving meanwhile are returned separately.
    pub async fn catch_up(&mut self) -> (Vec<Notification>, u64, Vec<Notification>) {
        let mut caught = Vec::new();
        let mut live = Vec::new();
        loop {
            match self.next().await {
                Event::Sync(b) => caught.extend(b.notifications),
                Event::Synced(s) => return (caught, s.head, live),
                Event::Live(n) => live.push(n),
                Event::Error(e) => panic!("error during catch-up: {e}"),
                _ => {}
            }
        }
    }

    /// Receives live notifications until `n` distinct ids are held.
    pub async fn live(&mut self, n: usize) -> Vec<Notification> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        while seen.len() < n {
            match self.next().await {
                Event::Live(note) if seen.insert(note.id) => out.push(note),
                Event::Error(e) => panic!("error while waiting for live notifications: {e}"),
                _ => {}
            }
        }
        out
    }

    /// Emits with an ack and returns the reply's first argument.
    pub async fn request(&self, event: &str, data: Value) -> Value {
        emit_with_reply(&self.client, event, data).await
    }

    pub async fn close(self) {
        let _ = self.client.disconnect().await;
    }
}

/// Emits `event` with an ack callback and waits for the reply.
pub async fn emit_with_reply(client: &Client, event: &str, data: Value) -> Value {
    let (tx, rx) = oneshot::channel();
    let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
    client
        .emit_with_ack(event, data, WAIT, move |p: Payload, _c: Client| {
            let tx = tx.clone();
            async move {
                if let Some(tx) = tx.lock().unwrap().take() {
                    // rust_socketio hands an ack's argument list as one array.
                    let reply = match first(p) {
                        Value::Array(mut args) if args.len() == 1 => args.remove(0),
                        other => other,
                    };
                    let _ = tx.send(reply);
                }
            }
            .boxed()
        })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, rx)
        .await
        .expect("a reply in time")
        .unwrap()
}

/// Connects, waits for the initial catch-up, and returns the subscriber ready for live
/// traffic.
pub async fn synced_subscriber(url: &str, token: &str, cursor: Option<u64>) -> Subscriber {
    let mut s = Subscriber::connect(url, token, cursor).await;
    s.catch_up().await;
    s
}

/// The stable code of an error reply (`""` when it is no error).
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Asserts the ids are strictly ascending.
pub fn assert_ascending(ids: &[u64]) {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly ascending: {ids:?}"
    );
}
