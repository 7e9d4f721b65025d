//! Three hub nodes (the real binary) on one PostgreSQL database, linked by Redis, behind
//! nginx with the configuration in `deploy/nginx/`. PostgreSQL, Redis and nginx are
//! started by the tests on loopback ports of their own; the nodes reach PostgreSQL and
//! Redis over TLS, as they would across a network. Devices are the real client core
//! (`belfry-client`, as the desktop app runs it) or raw Socket.IO subscribers.
//!
//! - every node delivers what any node published, read marks and subscriptions reach
//!   devices on other nodes, presence counts them all;
//! - the randomized gap test: all nodes publish at once while devices are cut off and
//!   sent to another node at random; every device ends with exactly what it should see;
//! - a node killed with SIGKILL: its devices come back through nginx on another node
//!   and catch up;
//! - Redis killed and restarted: nodes serve their own devices meanwhile, then re-link,
//!   rebuild rooms and catch their devices up;
//! - PostgreSQL restarted: publishes are refused with 503 while it is down, never
//!   answered 201 without being stored, and succeed again after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use belfry_client::{ClientEvent, ConnectionConfig, Device, HistoryQuery, Overrides};
use belfry_protocol::events::ReadRequest;
use belfry_server::auth::TokenSigner;
use belfry_testkit::{
    FaultProxy, Hub, KEY, Nginx, Postgres, Publisher, Redis, SECRET, eventually, free_port,
};
use common::{Event, Subscriber};
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A user token for the nodes' secret.
fn token(user: &str) -> String {
    TokenSigner::new(SECRET).mint(user, None, 3600)
}

/// Three nodes, their shared services and nginx in front.
struct Cluster {
    nodes: Vec<Hub>,
    nginx: Nginx,
    redis: Redis,
    postgres: Postgres,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start() -> Cluster {
        let postgres = Postgres::start().await;
        let redis = Redis::start().await;
        let database = format!("{}?sslmode=require", postgres.database().await);
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let args = ["--database-url", &database, "--redis-url", &redis.url()];
            nodes.push(Hub::start_with(dir.path(), free_port(), &args).await);
            dirs.push(dir);
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(Hub::addr).collect();
        let nginx = Nginx::start(&addrs).await;
        Cluster {
            nodes,
            nginx,
            redis,
            postgres,
            _dirs: dirs,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(Hub::addr).collect()
    }

    /// Subscribes `user` to `topic` over HTTP on node `n`.
    async fn subscribe(&self, n: usize, user: &str, topic: &str) {
        let status = self.nodes[n]
            .http
            .put(format!(
                "{}/api/v1/subscriptions/{topic}",
                self.nodes[n].url
            ))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "subscribe answered {status}");
    }

    /// The hubs' connections to PostgreSQL: how many use TLS, of how many.
    async fn database_connections_over_tls(&self) -> (i64, i64) {
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&self.postgres.url("postgres"))
            .await
            .unwrap();
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'belfry-hub'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap()
    }

    /// Devices of `user` connected anywhere, as node `n` counts them.
    async fn presence(&self, n: usize, user: &str) -> u64 {
        let body = self.nodes[n]
            .get(&format!("/api/v1/presence/{user}"), KEY)
            .await;
        body["devices"].as_u64().unwrap()
    }
}

/// A device running the real client core, reaching the cluster through a proxy of its
/// own (which the tests cut, or point at another node, as a load balancer would).
struct Phone {
    user: String,
    device: Device,
    proxy: FaultProxy,
    /// Every id the device reported as newly stored, in order (a repeat is a bug).
    stored: Arc<Mutex<Vec<u64>>>,
    _dir: tempfile::TempDir,
}

impl Phone {
    async fn start(user: &str, upstream: SocketAddr) -> Phone {
        let proxy = FaultProxy::start(upstream).await;
        let dir = tempfile::tempdir().unwrap();
        let config = ConnectionConfig {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..ConnectionConfig::default()
        };
        let overrides = Overrides {
            server_url: Some(proxy.url()),
            token: Some(token(user)),
        };
        let (device, mut events) = Device::start(dir.path(), overrides, config).await.unwrap();
        device.disable_popups();
        let stored = Arc::new(Mutex::new(Vec::new()));
        let log = stored.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let ClientEvent::Stored { notifications, .. } = event {
                    log.lock()
                        .unwrap()
                        .extend(notifications.iter().map(|n| n.id));
                }
            }
        });
        Phone {
            user: user.to_owned(),
            device,
            proxy,
            stored,
            _dir: dir,
        }
    }

    /// The ids the device holds, with whether it holds each as read.
    async fn history(&self) -> BTreeMap<u64, bool> {
        let query = HistoryQuery {
            limit: Some(1000),
            ..HistoryQuery::default()
        };
        let history = self.device.history(&query).await.unwrap();
        history.iter().map(|n| (n.id, n.read)).collect()
    }

    /// The ids the device holds.
    async fn held(&self) -> BTreeSet<u64> {
        self.history().await.into_keys().collect()
    }

    /// The ids the device holds as read.
    async fn read(&self) -> BTreeSet<u64> {
        let history = self.history().await;
        history
            .into_iter()
            .filter(|(_, read)| *read)
            .map(|(id, _)| id)
            .collect()
    }

    /// Waits until the device holds exactly `expected`; checks nothing was stored twice.
    async fn holds_exactly(&self, expected: &BTreeSet<u64>) {
        let what = format!(
            "{}'s device to hold its {} notifications",
            self.user,
            expected.len()
        );
        let held = eventually(&what, || async {
            let held = self.held().await;
            held.is_superset(expected).then_some(held)
        })
        .await;
        let extra: Vec<u64> = held.difference(expected).copied().collect();
        assert!(
            extra.is_empty(),
            "{} holds ids not meant for them: {extra:?}",
            self.user
        );
        let stored = self.stored.lock().unwrap().clone();
        let unique: BTreeSet<u64> = stored.iter().copied().collect();
        assert_eq!(
            unique.len(),
            stored.len(),
            "{} stored an id twice",
            self.user
        );
    }
}

/// Publishes a title to `to` through `publisher`; returns the id.
async fn publish(publisher: &Publisher, to: &[&str], title: &str) -> u64 {
    publisher.publish(json!({ "to": to, "title": title })).await
}

#[tokio::test]
async fn three_nodes_share_delivery_read_marks_subscriptions_and_presence() {
    let cluster = Cluster::start().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let mut laptop = Subscriber::connect(&urls[0], &token("ann"), Some(0)).await;
    let mut phone = Subscriber::connect(&urls[1], &token("ann"), Some(0)).await;
    laptop.catch_up().await;
    phone.catch_up().await;

    // Presence counts devices on every node, asked anywhere (through Redis over TLS: the
    // test's Redis has no plain port).
    assert_eq!(cluster.presence(2, "ann").await, 2);
    let (tls, all) = cluster.database_connections_over_tls().await;
    assert!(all >= 6 && tls == all, "{tls} of {all} connections use TLS");

    // Published on the third node, delivered live on the other two.
    let hello = publish(&cluster.nodes[2].publisher(), &["user:ann"], "hello").await;
    assert_eq!(laptop.live(1).await[0].id, hello);
    assert_eq!(phone.live(1).await[0].id, hello);

    // A read mark on one node reaches the device on another.
    let reply = laptop.request("read", json!({ "ids": [hello] })).await;
    assert_eq!(reply, json!({"ok": true}));
    loop {
        match phone.next().await {
            Event::Read(v) => {
                assert_eq!(v, json!({ "ids": [hello] }));
                break;
            }
            Event::Live(n) => panic!("unexpected live notification {}", n.id),
            _ => {}
        }
    }

    // A subscription made on node 0 puts the device on node 1 into the topic's room:
    // what node 2 publishes to the topic reaches it live.
    let reply = laptop.request("subscribe", json!({ "topic": "ops" })).await;
    assert_eq!(reply, json!({"ok": true}));
    loop {
        if let Event::Subscribed(v) = phone.next().await {
            assert_eq!(v, json!({ "topic": "ops" }));
            break;
        }
    }
    let ops = publish(&cluster.nodes[2].publisher(), &["topic:ops"], "deploy").await;
    let got = phone.live(1).await;
    assert_eq!(got[0].id, ops);
    assert_eq!(laptop.live(1).await[0].id, ops);

    // And an unsubscribe takes it out again: a later topic notification does not come,
    // the notification after it (to the user) does, and ids arrive in order.
    let reply = laptop
        .request("unsubscribe", json!({ "topic": "ops" }))
        .await;
    assert_eq!(reply, json!({"ok": true}));
    loop {
        if let Event::Unsubscribed(_) = phone.next().await {
            break;
        }
    }
    publish(&cluster.nodes[2].publisher(), &["topic:ops"], "quiet").await;
    let marker = publish(&cluster.nodes[0].publisher(), &["user:ann"], "marker").await;
    assert_eq!(phone.live(1).await[0].id, marker);

    laptop.close().await;
    phone.close().await;
    assert_eq!(
        eventually("devices to leave", || async {
            let n = cluster.presence(0, "ann").await;
            (n == 0).then_some(n)
        })
        .await,
        0
    );
}

/// Who sees a notification sent to `to`, among `users` with their topics.
fn audience<'a>(to: &[String], users: &'a BTreeMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    users
        .iter()
        .filter(|(user, topics)| {
            to.iter().any(|t| {
                t == "all"
                    || t.strip_prefix("user:") == Some(**user)
                    || t.strip_prefix("topic:")
                        .is_some_and(|topic| topics.contains(&topic))
            })
        })
        .map(|(user, _)| *user)
        .collect()
}

#[tokio::test]
async fn randomized_publishing_on_every_node_while_devices_move_loses_nothing() {
    let cluster = Cluster::start().await;
    let addrs = cluster.addrs();
    let users: BTreeMap<&str, Vec<&str>> = [
        ("ann", vec!["ops"]),
        ("bob", vec!["ops", "dev"]),
        ("cat", vec!["dev"]),
        ("dan", vec![]),
    ]
    .into_iter()
    .collect();
    for (i, (user, topics)) in users.iter().enumerate() {
        for topic in topics {
            cluster.subscribe(i % 3, user, topic).await;
        }
    }
    // Two devices per user, spread over the nodes.
    let mut phones = Vec::new();
    for (i, user) in users.keys().enumerate() {
        for j in 0..2 {
            phones.push(Phone::start(user, addrs[(i + j) % 3]).await);
        }
    }
    let phones = Arc::new(phones);

    // Every node publishes at once, to random targets.
    let targets = [
        "user:ann",
        "user:bob",
        "user:cat",
        "user:dan",
        "topic:ops",
        "topic:dev",
        "all",
    ];
    let mut publishers = Vec::new();
    for node in &cluster.nodes {
        let publisher = node.publisher();
        publishers.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..80 {
                let (to, pause) = {
                    let mut rng = rand::thread_rng();
                    let n = rng.gen_range(1..=2);
                    let to: Vec<String> = (0..n)
                        .map(|_| targets[rng.gen_range(0..targets.len())].to_owned())
                        .collect();
                    (to, rng.gen_range(0..15))
                };
                let id = publisher
                    .publish(json!({ "to": to, "title": format!("n{i}") }))
                    .await;
                sent.push((id, to));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            sent
        }));
    }
    // Meanwhile devices are cut off at random moments, and half of the time their load
    // balancer sends the reconnect to another node.
    let chaos = {
        let phones = phones.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let (which, node, moves, pause) = {
                    let mut rng = rand::thread_rng();
                    (
                        rng.gen_range(0..phones.len()),
                        rng.gen_range(0..addrs.len()),
                        rng.gen_bool(0.5),
                        rng.gen_range(5..40),
                    )
                };
                if moves {
                    phones[which].proxy.set_upstream(addrs[node]);
                }
                phones[which].proxy.cut();
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        })
    };
    let mut sent = Vec::new();
    for p in publishers {
        sent.extend(p.await.unwrap());
    }
    chaos.await.unwrap();

    let mut expected: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (id, to) in &sent {
        for user in audience(to, &users) {
            expected.entry(user).or_default().insert(*id);
        }
    }
    for phone in phones.iter() {
        let want = expected
            .get(phone.user.as_str())
            .cloned()
            .unwrap_or_default();
        phone.holds_exactly(&want).await;
    }
    let ids: BTreeSet<u64> = sent.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), sent.len(), "an id was given twice");
    println!(
        "published {} on 3 nodes; devices cut 60 times; every device holds exactly its {} to {}",
        sent.len(),
        expected.values().map(BTreeSet::len).min().unwrap_or(0),
        expected.values().map(BTreeSet::len).max().unwrap_or(0),
    );
}

#[tokio::test]
async fn devices_of_a_killed_node_come_back_through_nginx_and_catch_up() {
    let mut cluster = Cluster::start().await;
    // Through nginx: the devices land on one node (nginx hashes the client's address).
    let nginx: SocketAddr = cluster
        .nginx
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let phones = vec![
        Phone::start("eve", nginx).await,
        Phone::start("eve", nginx).await,
        Phone::start("fay", nginx).await,
    ];
    let before = publish(&cluster.nodes[0].publisher(), &["all"], "before").await;
    for phone in &phones {
        phone.holds_exactly(&BTreeSet::from([before])).await;
    }
    let mut busy = None;
    for (i, node) in cluster.nodes.iter().enumerate() {
        if node.metric("belfry_connections").await == 3 {
            busy = Some(i);
        }
    }
    let busy = busy.expect("one node holds all three devices");
    let others: Vec<usize> = (0..3).filter(|&i| i != busy).collect();

    // Killed mid-stream, while the other nodes keep publishing.
    let mut expected = BTreeSet::from([before]);
    let publisher = cluster.nodes[others[0]].publisher();
    let stream = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(publish(&publisher, &["all"], &format!("s{i}")).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    cluster.nodes[busy].kill().await;
    expected.extend(stream.await.unwrap());
    expected.insert(publish(&cluster.nodes[others[1]].publisher(), &["all"], "after").await);

    for phone in &phones {
        phone.holds_exactly(&expected).await;
    }
    let on_survivors = cluster.nodes[others[0]].metric("belfry_connections").await
        + cluster.nodes[others[1]].metric("belfry_connections").await;
    assert_eq!(
        on_survivors, 3,
        "every device reconnected to a surviving node"
    );
}

#[tokio::test]
async fn a_redis_outage_loses_nothing_and_the_nodes_resync_after_it() {
    let mut cluster = Cluster::start().await;
    let addrs = cluster.addrs();
    let laptop = Phone::start("gus", addrs[0]).await;
    let phone = Phone::start("gus", addrs[1]).await;
    let first = publish(&cluster.nodes[2].publisher(), &["user:gus"], "first").await;
    laptop.holds_exactly(&BTreeSet::from([first])).await;
    phone.holds_exactly(&BTreeSet::from([first])).await;

    cluster.redis.stop().await;
    // Each node keeps serving its own devices: notifications come from the store.
    let during = publish(&cluster.nodes[0].publisher(), &["user:gus"], "during").await;
    // A subscription made on node 0 reaches node 1 without Redis: its transaction
    // announces it to every node, so the phone there joins the topic's room too.
    let status = laptop
        .device
        .subscribe("ops")
        .await
        .expect("subscribing works without Redis");
    assert_eq!(status, vec!["ops".to_owned()]);
    let ops = publish(&cluster.nodes[2].publisher(), &["topic:ops"], "deploy").await;
    // A read mark made on node 0 cannot reach the phone on node 1 while Redis is down.
    let marked = laptop
        .device
        .mark_read(ReadRequest::Ids { ids: vec![first] })
        .await
        .expect("marking read works without Redis");
    assert_eq!(marked, 1);
    let marker = publish(&cluster.nodes[2].publisher(), &["user:gus"], "marker").await;
    let both = BTreeSet::from([first, during, ops, marker]);
    laptop.holds_exactly(&both).await;
    phone.holds_exactly(&both).await;
    // The phone has everything, and the marker after the read mark, but not the mark.
    assert!(phone.read().await.is_empty());
    assert_eq!(cluster.nodes[1].metric("belfry_redis_link_up").await, 0);

    // Redis is back: node 1 catches the phone up and re-sends the read marks made
    // meanwhile.
    cluster.redis.resume().await;
    eventually("the read mark to reach the phone", || async {
        (phone.read().await == BTreeSet::from([first])).then_some(())
    })
    .await;
    phone.holds_exactly(&both).await;
    // And the link works again: a later topic notification reaches the phone live.
    let later = publish(&cluster.nodes[2].publisher(), &["topic:ops"], "later").await;
    let all = BTreeSet::from([first, during, ops, marker, later]);
    phone.holds_exactly(&all).await;
    laptop.holds_exactly(&all).await;
    // Each node notices on its own that Redis is back (it pings every second while the
    // link is down); then presence spans the nodes again.
    eventually("every node to be linked again", || async {
        for node in &cluster.nodes {
            if node.metric("belfry_redis_link_up").await != 1 {
                return None;
            }
        }
        Some(())
    })
    .await;
    for node in &cluster.nodes {
        assert_eq!(node.metric("belfry_redis_outages_total").await, 1);
    }
    assert_eq!(
        cluster.presence(2, "gus").await,
        2,
        "presence spans nodes again"
    );
}

#[tokio::test]
async fn publishes_fail_with_503_while_postgres_restarts_and_nothing_is_lost() {
    let mut cluster = Cluster::start().await;
    let phone = Phone::start("hal", cluster.addrs()[1]).await;
    let publisher = cluster.nodes[0].publisher();
    let mut stored = BTreeSet::new();
    stored.insert(publish(&publisher, &["user:hal"], "before").await);

    cluster.postgres.stop().await;
    let refused = publisher
        .try_publish(json!({ "to": ["user:hal"], "title": "while down" }))
        .await
        .expect_err("no 201 while the store is down");
    assert!(refused.starts_with("503"), "{refused}");
    assert!(refused.contains("unavailable"), "{refused}");
    // Health says so too.
    let health = cluster.nodes[0]
        .http
        .get(format!("{}/healthz", cluster.nodes[0].url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(health, 503);

    cluster.postgres.resume().await;
    let back = eventually("publishing to work again", || async {
        publisher
            .try_publish(json!({ "to": ["user:hal"], "title": "after" }))
            .await
            .ok()
    })
    .await;
    stored.insert(back);
    // Every node delivers again, the restarted listener included.
    stored.insert(publish(&cluster.nodes[2].publisher(), &["user:hal"], "from node 2").await);
    phone.holds_exactly(&stored).await;
}

/// Two deployments share one Redis, each with its own channel prefix (and its own
/// database): presence, read marks and the other events between nodes stay within each
/// deployment.
#[tokio::test]
async fn two_deployments_on_one_redis_keep_to_themselves() {
    let postgres = Postgres::start().await;
    let redis = Redis::start().await;
    let mut dirs = Vec::new();
    let mut deployment = |prefix: &'static str, database: String, nodes: usize| {
        let (redis_url, dirs) = (redis.url(), &mut dirs);
        let mut starts = Vec::new();
        for _ in 0..nodes {
            let dir = tempfile::tempdir().unwrap();
            let (path, database, redis_url) =
                (dir.path().to_owned(), database.clone(), redis_url.clone());
            dirs.push(dir);
            starts.push(async move {
                let args = [
                    "--database-url",
                    &database,
                    "--redis-url",
                    &redis_url,
                    "--redis-prefix",
                    prefix,
                ];
                Hub::start_with(&path, free_port(), &args).await
            });
        }
        futures_util::future::join_all(starts)
    };
    let a = deployment("belfry-a", postgres.database().await, 2).await;
    let b = deployment("belfry-b", postgres.database().await, 1).await;

    // Alice's device on deployment A.
    let alice = token("alice");
    let mut device = Subscriber::connect(&a[0].url, &alice, Some(0)).await;
    device.catch_up().await;
    let presence = |hub: &Hub| {
        let hub_url = hub.url.clone();
        let http = hub.http.clone();
        async move {
            let r: serde_json::Value = http
                .get(format!("{hub_url}/api/v1/presence/alice"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["devices"].as_u64().unwrap()
        }
    };
    // A's other node counts her device; B, on the same Redis, knows nothing of it.
    eventually("A's other node sees alice", || async {
        (presence(&a[1]).await == 1).then_some(())
    })
    .await;
    assert_eq!(presence(&b[0]).await, 0, "presence crossed deployments");

    // A read mark made on B (an alice of B's own) reaches no device of A; one made on
    // A's other node reaches her device.
    let on_b = b[0].publisher().publish_to("user:alice", "B's").await;
    assert_eq!(
        b[0].post("/api/v1/notifications/read", &alice, json!({"ids": [on_b]}))
            .await,
        200
    );
    let on_a = a[1].publisher().publish_to("user:alice", "A's").await;
    assert_eq!(device.live(1).await[0].id, on_a);
    assert_eq!(
        a[1].post("/api/v1/notifications/read", &alice, json!({"ids": [on_a]}))
            .await,
        200
    );
    let mut reads = Vec::new();
    while let Some(event) = device.next_within(Duration::from_secs(2)).await {
        if let Event::Read(marks) = event {
            reads.push(marks);
        }
    }
    assert_eq!(
        reads,
        vec![json!({"ids": [on_a]})],
        "read marks of the other deployment"
    );
    device.close().await;
}
