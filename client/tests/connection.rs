//! The client core against the real hub: catch-up at launch, live delivery, a hub killed
//! and restarted mid-stream, overlap without duplicates or gaps, a client killed
//! mid-stream, read sync, subscriptions, refused tokens and unreachable hubs.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_client::events::ConnectionState;
use belfry_client::{ClientEvent, HistoryQuery};
use belfry_protocol::events::ReadRequest;
use belfry_testkit::eventually;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn catches_up_at_launch_then_receives_live_and_acks() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let before: BTreeSet<u64> = [
        hub.publish_to("user:amy", "while the app was off 1").await,
        hub.publish_to("user:amy", "while the app was off 2").await,
        hub.publish_to("user:amy", "while the app was off 3").await,
    ]
    .into();
    hub.publish_to("user:someone-else", "not for amy").await;

    let dev_dir = tempfile::tempdir().unwrap();
    let mut amy = TestDevice::start(dev_dir.path(), &hub.url, &token("amy")).await;
    let caught = loop {
        if let ClientEvent::CaughtUp { received } = amy.next().await {
            break received;
        }
    };
    assert_eq!(caught, 3);
    assert_eq!(amy.stored.iter().copied().collect::<BTreeSet<_>>(), before);
    assert_eq!(amy.device.status().state, ConnectionState::Connected);

    let live = hub.publish_to("user:amy", "live one").await;
    amy.until_stored(&[live].into()).await;
    let history = amy.device.history(&HistoryQuery::default()).await.unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0].id, live, "newest first");
    assert_eq!(amy.device.unread_count().await.unwrap(), 4);
    amy.assert_no_repeats();

    // The hub recorded the delivery (the device acked once stored).
    eventually("the device's ack recorded on the hub", || async {
        let r = hub
            .get(&format!("/api/v1/notifications/{live}/receipts"), KEY)
            .await;
        r["receipts"][0]["delivered_at"].is_string().then_some(())
    })
    .await;
}

#[tokio::test]
async fn survives_a_hub_killed_and_restarted_mid_stream_without_gaps_or_repeats() {
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let mut bo = TestDevice::start(dev_dir.path(), &hub.url, &token("bo")).await;
    bo.until_state(ConnectionState::Connected).await;

    let mut published = BTreeSet::new();
    for i in 0..50 {
        published.insert(
            hub.publish_to("user:bo", &format!("before crash {i}"))
                .await,
        );
    }
    hub.kill().await;
    // The device notices (heartbeat or a closed transport) and keeps trying.
    bo.until_state(ConnectionState::Reconnecting).await;
    hub.restart().await;
    for i in 0..100 {
        published.insert(
            hub.publish_to("user:bo", &format!("after restart {i}"))
                .await,
        );
    }
    bo.until_stored(&published).await;
    bo.until_state(ConnectionState::Connected).await;
    bo.assert_no_repeats();
    let history = bo
        .device
        .history(&HistoryQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let held: BTreeSet<u64> = history.iter().map(|n| n.id).collect();
    assert_eq!(held, published);
}

#[tokio::test]
async fn reconnects_racing_publishes_lose_and_repeat_nothing() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let mut cy = TestDevice::start(dev_dir.path(), &hub.url, &token("cy")).await;
    cy.until_state(ConnectionState::Connected).await;

    let publisher = hub.publisher();
    let publisher = tokio::spawn(async move {
        let mut ids = BTreeSet::new();
        for i in 0..300 {
            let body = json!({"to": ["user:cy", "all"], "title": format!("n{i}")});
            ids.insert(publisher.publish(body).await);
        }
        ids
    });
    // Drop and remake the connection again and again while the stream runs.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        cy.device.reconnect_now().await;
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(5), cy.events.recv()).await
        {
            if let ClientEvent::Stored { notifications, .. } = ev {
                cy.stored.extend(notifications.iter().map(|n| n.id));
            }
        }
    }
    let published = publisher.await.unwrap();
    cy.until_stored(&published).await;
    cy.assert_no_repeats();
    assert_eq!(
        cy.stored.iter().copied().collect::<BTreeSet<_>>(),
        published
    );
}

#[tokio::test]
async fn a_client_killed_mid_stream_resumes_without_loss_or_repeats() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let follow = |dir: &std::path::Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_belfry-follow"))
            .args(["--server", &hub.url, "--token", &token("dee")])
            .arg("--data-dir")
            .arg(dir)
            .env("BELFRY_BACKOFF_MIN_MS", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    // What a follower prints: one JSON line per newly stored notification.
    async fn printed(
        child: &mut tokio::process::Child,
        count: usize,
    ) -> (Vec<u64>, tokio::task::JoinHandle<Vec<u64>>) {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut ids = Vec::new();
        while ids.len() < count {
            let line = tokio::time::timeout(WAIT, lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let n: serde_json::Value = serde_json::from_str(&line).unwrap();
            ids.push(n["id"].as_u64().unwrap());
        }
        // Keep reading until the process dies: everything it printed counts as shown.
        let rest = tokio::spawn(async move {
            let mut more = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(n) = serde_json::from_str::<serde_json::Value>(&line) {
                    more.extend(n["id"].as_u64());
                }
            }
            more
        });
        (ids, rest)
    }

    let mut published = Vec::new();
    for i in 0..20 {
        published.push(hub.publish_to("user:dee", &format!("first {i}")).await);
    }
    let mut first = follow(dev_dir.path());
    let (mut first_ids, first_rest) = printed(&mut first, 20).await;
    // Keep publishing and kill the follower with SIGKILL in the middle of the stream.
    let publisher = hub.publisher();
    let stream = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..200 {
            ids.push(
                publisher
                    .publish_to("user:dee", &format!("stream {i}"))
                    .await,
            );
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    first_ids.extend(first_rest.await.unwrap());
    published.extend(stream.await.unwrap());

    // Restarted on the same data dir: it resumes from its persisted cursor.
    let mut second = follow(dev_dir.path());
    let total: BTreeSet<u64> = published.iter().copied().collect();
    let mut lines = BufReader::new(second.stdout.take().unwrap()).lines();
    let mut second_ids = Vec::new();
    let store = belfry_client::LocalStore::open(dev_dir.path())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let held = loop {
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await
        {
            let n: serde_json::Value = serde_json::from_str(&line).unwrap();
            second_ids.push(n["id"].as_u64().unwrap());
            continue;
        }
        let history = store
            .history(&HistoryQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        let held: BTreeSet<u64> = history.iter().map(|n| n.id).collect();
        if held.is_superset(&total) {
            break held;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never caught up: {} of {}",
            held.len(),
            total.len()
        );
    };
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_eq!(held, total, "nothing lost, nothing foreign");
    let shown: Vec<u64> = first_ids.iter().chain(second_ids.iter()).copied().collect();
    let unique: BTreeSet<u64> = shown.iter().copied().collect();
    assert_eq!(unique.len(), shown.len(), "a notification was shown twice");
    assert!(unique.is_subset(&total));
    println!(
        "published {} / shown before kill {} / shown after restart {} / held {}",
        total.len(),
        first_ids.len(),
        second_ids.len(),
        held.len()
    );
}

#[tokio::test]
async fn read_state_syncs_both_ways_and_offline_reads_are_sent_later() {
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let t = token("eve");
    let mut eve = TestDevice::start(dev_dir.path(), &hub.url, &t).await;
    eve.until_state(ConnectionState::Connected).await;
    let a = hub.publish_to("user:eve", "a").await;
    let b = hub.publish_to("user:eve", "b").await;
    let c = hub.publish_to("user:eve", "c").await;
    eve.until_stored(&[a, b, c].into()).await;

    // Here -> hub: marking read in the app reaches the hub.
    eve.device
        .mark_read(ReadRequest::Ids { ids: vec![a] })
        .await
        .unwrap();
    let page = hub.get("/api/v1/notifications", &t).await;
    assert_eq!(page["notifications"][0]["read"], true);

    // Hub -> here: a read on another device arrives as a read event.
    assert_eq!(
        hub.post("/api/v1/notifications/read", &t, json!({"ids": [b]}))
            .await,
        200
    );
    loop {
        if let ClientEvent::ReadChanged = eve.next().await {
            break;
        }
    }
    assert_eq!(eve.device.unread_count().await.unwrap(), 1);

    // Offline: the mark is kept and sent once connected again.
    hub.kill().await;
    eve.until_state(ConnectionState::Reconnecting).await;
    eve.device.mark_all_read().await.unwrap();
    assert_eq!(eve.device.unread_count().await.unwrap(), 0);
    hub.restart().await;
    eve.until_state(ConnectionState::Connected).await;
    eventually("the offline read reached the hub", || async {
        hub.all_read(&t).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn subscriptions_go_through_the_hub() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let mut fin = TestDevice::start(dev_dir.path(), &hub.url, &token("fin")).await;
    fin.until_state(ConnectionState::Connected).await;
    assert_eq!(
        fin.device.subscribe("deploys").await.unwrap(),
        vec!["deploys"]
    );
    let id = hub.publish_to("topic:deploys", "shipped").await;
    fin.until_stored(&[id].into()).await;
    let topics = fin.device.history_topics().await.unwrap();
    assert_eq!(topics, vec!["deploys"]);
    assert_eq!(
        fin.device.unsubscribe("deploys").await.unwrap(),
        Vec::<String>::new()
    );
    assert!(fin.device.subscribe("not a topic").await.is_err());
}

#[tokio::test]
async fn a_refused_token_is_reported_in_plain_words_without_a_reconnect_loop() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let expired = belfry_server::auth::TokenSigner::new(SECRET)
        .sign(&json!({"sub": "gil", "exp": 1_000_000}));
    let dev_dir = tempfile::tempdir().unwrap();
    let mut gil = TestDevice::start(dev_dir.path(), &hub.url, &expired).await;
    let detail = gil.until_state(ConnectionState::AuthFailed).await;
    assert!(detail.contains("expired"), "{detail}");
    // It waits for a new token instead of hammering the hub.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.metric("belfry_auth_failures_total").await, 1);

    // A new token connects at once.
    let mut settings = gil.device.settings();
    settings.token = token("gil");
    gil.device.update_settings(settings).await.unwrap();
    gil.until_state(ConnectionState::Connected).await;
}

#[tokio::test]
async fn an_unreachable_hub_is_retried_with_growing_delays() {
    let port = free_port();
    let dev_dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut hal = TestDevice::start(dev_dir.path(), &url, &token("hal")).await;
    let detail = hal.until_state(ConnectionState::Reconnecting).await;
    assert!(detail.contains("connection refused"), "{detail}");
    // Count connection attempts for three seconds: with 100 ms doubling to 1 s there
    // are a handful, never a hot loop.
    let mut attempts = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(ev)) = tokio::time::timeout_at(end, hal.events.recv()).await {
        if let ClientEvent::Status(s) = ev
            && s.state == ConnectionState::Connecting
        {
            attempts += 1;
        }
    }
    assert!((2..=10).contains(&attempts), "{attempts} attempts in 3 s");
    // Once the hub is there, it connects by itself.
    let hub_dir = tempfile::tempdir().unwrap();
    let _hub = Hub::start_on(hub_dir.path(), port).await;
    hal.until_state(ConnectionState::Connected).await;
}

/// Drains `dev`, adding the title of each newly stored notification to `fresh`, until
/// every one of `titles` is there.
async fn until_fresh(dev: &mut TestDevice, fresh: &mut Vec<String>, titles: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !titles.iter().all(|t| fresh.contains(t)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, dev.events.recv()).await {
            Ok(Some(ClientEvent::Stored { notifications, .. })) => {
                fresh.extend(notifications.into_iter().map(|n| n.title));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("waiting for {titles:?}; got {fresh:?}"),
        }
    }
}

/// Publishes each title to `rex`; returns the titles.
async fn publish_titles(hub: &Hub, titles: &[&str]) -> Vec<String> {
    let publisher = hub.publisher();
    for t in titles {
        publisher.publish_to("user:rex", t).await;
    }
    titles.iter().map(|t| (*t).to_owned()).collect()
}

/// The hub's database is restored from an older backup while a device runs: the store
/// starts a new epoch, the device starts over (keeping its history), and everything
/// published after the restore reaches it exactly once, while what the backup already
/// held is recognised, not shown twice.
#[tokio::test]
async fn a_restored_hub_database_starts_over_the_device_and_loses_nothing() {
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(hub_dir.path()).await;
    let dev_dir = tempfile::tempdir().unwrap();
    let mut dev = TestDevice::start(dev_dir.path(), &hub.url, &token("rex")).await;
    dev.until_state(ConnectionState::Connected).await;
    let mut fresh = Vec::new();

    let before = publish_titles(&hub, &["kept 1", "kept 2", "kept 3"]).await;
    until_fresh(&mut dev, &mut fresh, &before).await;
    // A backup, taken while the hub is stopped; then the hub goes on without it.
    assert!(hub.terminate().await.success());
    let db = hub_dir.path().join("belfry.db");
    let backup = hub_dir.path().join("backup.db");
    std::fs::copy(&db, &backup).unwrap();
    hub.restart().await;
    let lost = publish_titles(&hub, &["gone 4", "gone 5", "gone 6", "gone 7"]).await;
    until_fresh(&mut dev, &mut fresh, &lost).await;

    // The older copy is restored: its ids 4 and on are issued again.
    assert!(hub.terminate().await.success());
    for name in ["belfry.db-wal", "belfry.db-shm"] {
        let _ = std::fs::remove_file(hub_dir.path().join(name));
    }
    std::fs::copy(&backup, &db).unwrap();
    hub.restart().await;
    fresh.clear();
    let after = publish_titles(&hub, &["after 4", "after 5"]).await;
    until_fresh(&mut dev, &mut fresh, &after).await;
    // Anything more that would arrive has had time to.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), dev.events.recv()).await {
        if let ClientEvent::Stored { notifications, .. } = ev {
            fresh.extend(notifications.into_iter().map(|n| n.title));
        }
    }
    // Exactly these, each once. (In either order: the device starts over while they are
    // published, and a live notification may overtake the catch-up it is also in;
    // PROTOCOL.md section 7.)
    fresh.sort_unstable();
    assert_eq!(
        fresh, after,
        "after the restore, exactly the new notifications are new"
    );
    // The history holds everything once: what the backup had, what only the lost store
    // had (now read: it can no longer be marked on the hub), and the new ones.
    let history = dev
        .device
        .history(&HistoryQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut titles: Vec<&str> = history.iter().map(|n| n.title.as_str()).collect();
    titles.sort_unstable();
    let mut expected: Vec<&str> = before
        .iter()
        .chain(&lost)
        .chain(&after)
        .map(String::as_str)
        .collect();
    expected.sort_unstable();
    assert_eq!(titles, expected);
    for n in &history {
        assert_eq!(n.read, n.title.starts_with("gone"), "{}", n.title);
    }
    // And the device goes on in the new epoch as usual.
    let next = publish_titles(&hub, &["later"]).await;
    until_fresh(&mut dev, &mut fresh, &next).await;
    hub.kill().await;
}
