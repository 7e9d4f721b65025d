//! Network faults between the desktop connection core and the hub, through a TCP proxy
//! (belfry-testkit's FaultProxy): connections cut, stalled (half-open: only a heartbeat
//! or ping timeout can tell), slowed, and the network down for a while, all during a
//! steady publish stream. Every device ends with exactly what was published to it. A
//! consumer that stops reading slows nobody else, does not make the hub's memory grow
//! with what it misses, is dropped, and catches up when it comes back.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_client::ConnectionState;
use belfry_testkit::{FaultProxy, Publisher, eventually};
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A hub that notices a silent client within about three seconds.
const QUICK_PINGS: &[&str] = &["--ping-interval", "1s", "--ping-timeout", "2s"];

fn all_connected(devices: &[TestDevice]) -> bool {
    devices
        .iter()
        .all(|d| d.device.status().state == ConnectionState::Connected)
}

/// Publishes to `targets` in turn until stopped; the ids answered 201 with their target.
fn publish_steadily(
    publisher: Publisher,
    targets: Vec<String>,
    running: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(u64, String)>> {
    tokio::spawn(async move {
        let mut published = Vec::new();
        let mut i = 0;
        while running.load(Relaxed) {
            let to = targets[i % targets.len()].clone();
            let id = publisher
                .publish(json!({"to": [to], "title": format!("n{i}")}))
                .await;
            published.push((id, to));
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        published
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_stalled_slowed_and_downed_links_lose_nothing() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_with(hub_dir.path(), free_port(), QUICK_PINGS).await;
    let proxy = FaultProxy::start(hub.addr()).await;
    let users = ["fa", "fb", "fc"];
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut devices = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let user = users[i % users.len()];
        devices.push(TestDevice::start(dir.path(), &proxy.url(), &token(user)).await);
    }
    settle(&mut devices, "every device connected", all_connected).await;

    let running = Arc::new(AtomicBool::new(true));
    let mut targets: Vec<String> = users.iter().map(|u| format!("user:{u}")).collect();
    targets.push("all".into());
    let stream = publish_steadily(hub.publisher(), targets, running.clone());
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));

    // 1. Cut: every connection closed under the devices.
    pause(500).await;
    let accepted = proxy.accepted();
    proxy.cut();
    settle(&mut devices, "reconnected after the cut", |d| {
        proxy.accepted() >= accepted + d.len() && all_connected(d)
    })
    .await;

    // 2. Stall: the links stay open and pass nothing. The devices' heartbeat notices and
    //    they reconnect; the hub's ping timeout drops its side.
    pause(500).await;
    let accepted = proxy.accepted();
    let stalled_at = Instant::now();
    proxy.stall();
    settle(&mut devices, "reconnected after the stall", |d| {
        proxy.accepted() >= accepted + d.len() && all_connected(d)
    })
    .await;
    let devices_noticed = stalled_at.elapsed();
    eventually("the hub drops the stalled sockets", || async {
        (hub.metric("belfry_connections").await == devices.len() as u64).then_some(())
    })
    .await;
    let hub_noticed = stalled_at.elapsed();
    proxy.cut(); // release the frozen links' file descriptors

    // 3. Slow: 512-byte chunks, 20 ms apart, both ways, for two seconds.
    proxy.slow(Duration::from_millis(20), 512);
    for _ in 0..40 {
        pause(50).await;
        devices.iter_mut().for_each(TestDevice::drain);
    }
    proxy.slow(Duration::ZERO, 0);

    // 4. Down: the network refuses connections for two seconds.
    let accepted = proxy.accepted();
    proxy.set_down(true);
    proxy.cut();
    for _ in 0..40 {
        pause(50).await;
        devices.iter_mut().for_each(TestDevice::drain);
    }
    let refused = proxy.accepted() - accepted;
    proxy.set_down(false);
    settle(&mut devices, "reconnected after the outage", all_connected).await;

    pause(500).await;
    running.store(false, Relaxed);
    let published = stream.await.unwrap();
    let wanted = |user: &str| -> BTreeSet<u64> {
        published
            .iter()
            .filter(|(_, to)| to == "all" || *to == format!("user:{user}"))
            .map(|(id, _)| *id)
            .collect()
    };
    let expect: Vec<BTreeSet<u64>> = (0..devices.len())
        .map(|i| wanted(users[i % users.len()]))
        .collect();
    settle(
        &mut devices,
        "every device holds what was published to it",
        |d| {
            d.iter()
                .zip(&expect)
                .all(|(dev, want)| want.iter().all(|id| dev.stored.contains(id)))
        },
    )
    .await;
    let mut delivered = 0;
    for (dev, want) in devices.iter().zip(&expect) {
        dev.assert_no_repeats();
        assert_eq!(&dev.held().await, want);
        delivered += dev.stored.len();
    }
    println!(
        "network faults: published {}, delivered {delivered}, lost 0, connections {}, \
         refused while down {refused}, stall noticed by the devices after {:.1} s and by the hub after {:.1} s",
        published.len(),
        proxy.accepted(),
        devices_noticed.as_secs_f64(),
        hub_noticed.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_slows_nobody_and_catches_up_later() {
    let hub_dir = tempfile::tempdir().unwrap();
    // A frozen client is dropped about 60 s after it froze (ping interval + timeout,
    // which is also the hub's TCP_USER_TIMEOUT): time enough to publish everything and
    // for the readers to store it (each stores a live notification in a transaction of
    // its own: about 100 a second on this machine's disk) while it is still connected.
    let pings = [
        "--ping-interval",
        "30s",
        "--ping-timeout",
        "30s",
        "--idle-timeout",
        "90s",
    ];
    let hub = Hub::start_with(hub_dir.path(), free_port(), &pings).await;
    let proxy = FaultProxy::start(hub.addr()).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Two devices straight to the hub, one behind the proxy.
    let mut devices = vec![
        TestDevice::start(dirs[0].path(), &hub.url, &token("sa")).await,
        TestDevice::start(dirs[1].path(), &hub.url, &token("sb")).await,
        TestDevice::start(dirs[2].path(), &proxy.url(), &token("sc")).await,
    ];
    settle(&mut devices, "every device connected", all_connected).await;
    let rss_before = hub.rss_kib().unwrap();

    // The slow device stops reading (its link freezes) and cannot come back yet.
    proxy.stall();
    proxy.set_down(true);
    // 3,000 notifications of about 6 KB each to everyone, from 8 publishers: 18 MB that
    // the frozen device cannot take.
    const COUNT: usize = 3000;
    let mut tasks = Vec::new();
    for p in 0..8 {
        let publisher = hub.publisher();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (p..COUNT).step_by(8) {
                let body = json!({
                    "to": ["all"], "title": format!("big {i}"),
                    "body": "x".repeat(4000), "data": {"blob": "y".repeat(2000)},
                });
                ids.push(publisher.publish(body).await);
            }
            ids
        }));
    }
    let mut rss_peak = rss_before;
    let frozen_at = Instant::now();
    while tasks.iter().any(|t| !t.is_finished()) {
        rss_peak = rss_peak.max(hub.rss_kib().unwrap());
        devices.iter_mut().for_each(TestDevice::drain);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    // The others have everything while the frozen one is still connected to the hub.
    let readers = Duration::from_secs(50);
    settle_within(
        &mut devices[..2],
        "the readers hold everything",
        readers,
        |d| {
            d.iter()
                .all(|dev| ids.iter().all(|id| dev.stored.contains(id)))
        },
    )
    .await;
    let served_after = frozen_at.elapsed();
    let still_connected = hub.metric("belfry_connections").await;
    assert_eq!(
        still_connected, 3,
        "the frozen device was dropped before the others were served"
    );
    assert!(devices[2].stored.len() < ids.len());
    rss_peak = rss_peak.max(hub.rss_kib().unwrap());
    // The hub then drops it (its link takes nothing: TCP_USER_TIMEOUT and the ping
    // timeout both end it).
    let deadline = Instant::now() + Duration::from_secs(90);
    while hub.metric("belfry_connections").await != 2 {
        assert!(
            Instant::now() < deadline,
            "the hub never dropped the frozen socket"
        );
        devices.iter_mut().for_each(TestDevice::drain);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dropped_after = frozen_at.elapsed();
    let grew_kib = rss_peak.saturating_sub(rss_before);
    // What the frozen device missed is not kept for it: the hub grows by a fraction of
    // the 18 MB published (store pages, its bounded send queue).
    assert!(
        grew_kib < 8 * 1024,
        "hub memory grew {grew_kib} KiB while a consumer was frozen"
    );

    // It comes back and catches up from its cursor.
    proxy.cut();
    proxy.set_down(false);
    settle(&mut devices[2..], "the slow device caught up", |d| {
        ids.iter().all(|id| d[0].stored.contains(id))
    })
    .await;
    for (i, dev) in devices.iter().enumerate() {
        dev.assert_no_repeats();
        let held = dev.held().await;
        let missing: Vec<_> = ids.difference(&held).take(10).collect();
        let extra: Vec<_> = held.difference(&ids).take(10).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "device {i} holds {} of {}: missing {missing:?}, extra {extra:?}",
            held.len(),
            ids.len()
        );
    }
    println!(
        "slow consumer: published {} (18 MB); the two readers held all {:.1} s after the \
         freeze, the frozen device still connected; hub RSS {rss_before} KiB before, peak \
         {rss_peak} KiB (+{grew_kib} KiB); frozen device dropped {:.1} s after the freeze, \
         then caught up {} on return",
        ids.len(),
        served_after.as_secs_f64(),
        dropped_after.as_secs_f64(),
        devices[2].stored.len(),
    );
}
