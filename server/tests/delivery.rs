//! Live delivery, isolation, catch-up and ordering against the real hub on a real port.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::FutureExt;
use rust_socketio::TransportType;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(400);

/// Publishes `n` notifications to `target` from a task of their own, `pause` apart;
/// the task ends with their ids.
fn publish_in_background(
    hub: &TestHub,
    target: &'static str,
    n: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<u64>> {
    let publisher = hub.publisher();
    tokio::spawn(async move {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(publisher.publish_to(target, &format!("racing {i}")).await);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        ids
    })
}

#[tokio::test]
async fn live_delivery_to_a_user_several_users_a_topic_and_all_reaches_only_them() {
    let hub = TestHub::start().await;
    let mut alice = synced_subscriber(&hub.url, &token("alice"), Some(0)).await;
    let mut bob = synced_subscriber(&hub.url, &token("bob"), Some(0)).await;
    let mut carol = synced_subscriber(&hub.url, &token("carol"), Some(0)).await;
    // carol subscribes to deploys; nobody else does.
    assert_eq!(
        carol
            .request("subscribe", json!({"topic": "deploys"}))
            .await,
        json!({"ok": true})
    );

    let to_alice = hub.publish_to("user:alice", "for alice").await;
    let got = alice.live(1).await;
    assert_eq!((got[0].id, got[0].title.as_str()), (to_alice, "for alice"));

    let to_two = hub
        .publish(json!({"to": ["user:alice", "user:bob"], "title": "for two"}))
        .await
        .id;
    assert_eq!(alice.live(1).await[0].id, to_two);
    assert_eq!(bob.live(1).await[0].id, to_two);

    let to_topic = hub.publish_to("topic:deploys", "deployed").await;
    let n = carol.live(1).await.remove(0);
    assert_eq!((n.id, n.topic.as_deref()), (to_topic, Some("deploys")));

    let to_all = hub.publish_to("all", "everyone").await;
    for s in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(s.live(1).await[0].id, to_all);
    }

    // Nothing else arrived anywhere: carol never saw alice's or the pair's, alice and bob
    // never saw the topic's.
    for s in [&mut alice, &mut bob, &mut carol] {
        if let Some(Event::Live(n)) = s.next_within(QUIET).await {
            panic!("unexpected delivery {n:?}");
        }
    }
    // A user who was not addressed does not see it over HTTP either.
    let (status, page) = hub
        .call(reqwest::Method::GET, "/notifications", &token("bob"), None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<u64> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![to_two, to_all]);
    hub.stop().await;
}

#[tokio::test]
async fn catch_up_after_disconnect_delivers_exactly_what_was_missed_in_order() {
    let hub = TestHub::start().await;
    let before = hub.publish_to("user:dave", "seen before").await;
    let dave = synced_subscriber(&hub.url, &token("dave"), Some(0)).await;
    dave.close().await;

    let mut published = Vec::new();
    for i in 0..500 {
        // Interleave other users' traffic, which must not show up.
        if i % 50 == 0 {
            hub.publish_to("user:erin", "not for dave").await;
        }
        published.push(hub.publish_to("user:dave", &format!("missed {i}")).await);
    }
    let mut dave = Subscriber::connect(&hub.url, &token("dave"), Some(before)).await;
    let (caught, head, live) = dave.catch_up().await;
    assert!(live.is_empty());
    let ids: Vec<u64> = caught.iter().map(|n| n.id).collect();
    assert_eq!(ids, published, "exactly the missed ones, ascending");
    assert!(head >= *published.last().unwrap());
    assert_eq!(caught[499].title, "missed 499");
    hub.stop().await;
}

#[tokio::test]
async fn first_connection_without_cursor_gets_unread_only() {
    let hub = TestHub::start().await;
    let read = hub.publish_to("user:fay", "already read").await;
    let unread = hub.publish_to("user:fay", "unread").await;
    let (status, _) = hub.mark_read(&token("fay"), json!({"ids": [read]})).await;
    assert_eq!(status, 200);
    let mut fay = Subscriber::connect(&hub.url, &token("fay"), None).await;
    let (caught, head, _) = fay.catch_up().await;
    assert_eq!(
        caught.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![unread]
    );
    assert!(!caught[0].read);
    assert_eq!(head, unread);
    hub.stop().await;
}

#[tokio::test]
async fn catch_up_racing_live_publishes_leaves_no_gap() {
    let hub = TestHub::start_with(|c| c.catch_up_batch = 50).await;
    let mut backlog = Vec::new();
    for i in 0..400 {
        backlog.push(hub.publish_to("user:gus", &format!("backlog {i}")).await);
    }
    // Publish continuously while gus connects and catches up.
    let publisher = publish_in_background(&hub, "user:gus", 300, Duration::ZERO);
    let mut gus = Subscriber::connect(&hub.url, &token("gus"), Some(0)).await;
    let (caught, head, mut live) = gus.catch_up().await;
    let racing = publisher.await.unwrap();
    // Everything after synced arrives live.
    let mut held: BTreeSet<u64> = caught.iter().chain(live.iter()).map(|n| n.id).collect();
    let expected: BTreeSet<u64> = backlog.iter().chain(racing.iter()).copied().collect();
    while !expected.is_subset(&held) {
        match gus.next().await {
            Event::Live(n) => {
                held.insert(n.id);
                live.push(n);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held, expected, "no gap and nothing foreign");
    // Catch-up batches are ascending; live ones too (emitted in id order).
    assert_ascending(&caught.iter().map(|n| n.id).collect::<Vec<_>>());
    let mut live_ids: Vec<u64> = live.iter().map(|n| n.id).collect();
    live_ids.dedup();
    assert_ascending(&live_ids);
    // The cursor rule: after synced, head covers everything caught up.
    assert!(head >= *backlog.last().unwrap());
    hub.stop().await;
}

/// A device that reconnects up to date is answered from the hub's head without a store
/// read; publishes racing its reconnects must still all reach it, by catch-up or live.
#[tokio::test]
async fn up_to_date_reconnects_racing_publishes_leave_no_gap() {
    // One user reconnecting as fast as it can: lift the per-user connect limit (tested
    // on its own in security.rs).
    let hub = TestHub::start_with(|c| c.connect_burst = 100_000).await;
    let first = hub.publish_to("user:hal", "before").await;
    let racing = publish_in_background(&hub, "user:hal", 150, Duration::from_millis(3));
    // Reconnect over and over, each time from the cursor the rule allows: the highest
    // caught-up id or the head `synced` named (never a live one seen before `synced`).
    let mut cursor = first;
    let mut held = BTreeSet::from([first]);
    loop {
        let done = racing.is_finished();
        let mut hal = Subscriber::connect(&hub.url, &token("hal"), Some(cursor)).await;
        let (caught, head, live) = hal.catch_up().await;
        held.extend(caught.iter().chain(live.iter()).map(|n| n.id));
        cursor = caught.iter().map(|n| n.id).fold(cursor.max(head), u64::max);
        // Live ones after `synced` move the cursor too.
        while let Some(Event::Live(n)) = hal.next_within(Duration::from_millis(5)).await {
            held.insert(n.id);
            cursor = cursor.max(n.id);
        }
        hal.close().await;
        if done {
            break;
        }
    }
    let expected: BTreeSet<u64> = std::iter::once(first)
        .chain(racing.await.unwrap())
        .collect();
    assert_eq!(held, expected, "every racing publish reached the device");
    // Up to date now: an empty catch-up whose head is the newest id.
    let newest = *expected.last().unwrap();
    let before = up_to_date_catch_ups(&hub).await;
    let mut hal = Subscriber::connect(&hub.url, &token("hal"), Some(newest)).await;
    let (caught, head, _) = hal.catch_up().await;
    assert!(caught.is_empty(), "{caught:?}");
    assert_eq!(head, newest);
    assert_eq!(
        up_to_date_catch_ups(&hub).await,
        before + 1,
        "answered from the head, without a store read"
    );
    hal.close().await;
    hub.stop().await;
}

/// How many catch-ups the hub answered from its head so far.
async fn up_to_date_catch_ups(hub: &TestHub) -> u64 {
    hub.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("belfry_catch_ups_up_to_date_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the up-to-date catch-up counter")
}

#[tokio::test]
async fn sync_request_replays_from_a_cursor() {
    let hub = TestHub::start().await;
    let ids = [
        hub.publish_to("user:hal", "one").await,
        hub.publish_to("user:hal", "two").await,
    ];
    let mut hal = synced_subscriber(&hub.url, &token("hal"), Some(ids[1])).await;
    assert_eq!(
        hal.request("sync", json!({"cursor": 0})).await,
        json!({"ok": true})
    );
    let (caught, _, _) = hal.catch_up().await;
    assert_eq!(caught.iter().map(|n| n.id).collect::<Vec<_>>(), ids);
    hub.stop().await;
}

#[tokio::test]
async fn every_device_of_a_user_gets_live_notifications() {
    let hub = TestHub::start().await;
    let mut laptop = synced_subscriber(&hub.url, &token("ivy"), Some(0)).await;
    let mut phone = synced_subscriber(&hub.url, &token("ivy"), Some(0)).await;
    let id = hub.publish_to("user:ivy", "both devices").await;
    assert_eq!(laptop.live(1).await[0].id, id);
    assert_eq!(phone.live(1).await[0].id, id);
    hub.stop().await;
}

#[tokio::test]
async fn live_notifications_arrive_in_id_order_under_concurrent_publishers() {
    let hub = TestHub::start().await;
    let mut jan = synced_subscriber(&hub.url, &token("jan"), Some(0)).await;
    let mut tasks = Vec::new();
    for p in 0..8 {
        let publisher = hub.publisher();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let body = json!({"to": ["user:jan", "all"], "title": format!("p{p} #{i}")});
                publisher.publish(body).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = jan.live(200).await;
    assert_ascending(&got.iter().map(|n| n.id).collect::<Vec<_>>());
    hub.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_caught_up_instead_of_losing_notifications() {
    let hub = TestHub::start_with(|c| {
        c.publish_rate = 100_000.0;
        c.publish_burst = 100_000;
    })
    .await;
    // A client whose handler blocks: while blocked it reads nothing from its connection,
    // so the kernel buffers and then the hub's per-socket buffer fill up.
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let (got_tx, mut got_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value)>();
    let client = client_builder(&hub.url, "/", json!({"token": token("slo"), "cursor": 0}))
        .on_any(move |event, payload, _c| {
            let (gate, got) = (gate_rx.clone(), got_tx.clone());
            async move {
                let mut gate = gate;
                let _ = gate.wait_for(|open| *open).await;
                if let rust_socketio::Payload::Text(mut v) = payload {
                    let _ = got.send((String::from(event), v.remove(0)));
                }
            }
            .boxed()
        })
        .connect()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ~4 KB each: far more than the socket buffers hold.
    let body = "x".repeat(4000);
    let mut published = Vec::new();
    for i in 0..6000 {
        published.push(
            hub.publish(json!({"to": ["user:slo"], "title": format!("n{i}"), "body": body}))
                .await
                .id,
        );
        if i % 500 == 499 {
            let m = hub.metrics().await;
            if !m.contains("belfry_lagged_total 0") {
                break;
            }
        }
    }
    let m = hub.metrics().await;
    assert!(
        !m.contains("belfry_lagged_total 0"),
        "the socket never fell behind:\n{m}"
    );
    // Other users are not held up meanwhile.
    let mut fast = synced_subscriber(&hub.url, &token("fst"), Some(0)).await;
    let quick = hub.publish_to("user:fst", "not delayed").await;
    assert_eq!(fast.live(1).await[0].id, quick);

    // Let the slow client read again: it ends with every id, through live and catch-up.
    gate_tx.send(true).unwrap();
    let expected: BTreeSet<u64> = published.iter().copied().collect();
    let mut held = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !expected.is_subset(&held) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (event, value) = tokio::time::timeout(left, got_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("stuck at {} of {}", held.len(), expected.len()))
            .unwrap();
        match event.as_str() {
            "notification" => {
                held.insert(value["id"].as_u64().unwrap());
            }
            "sync" => held.extend(
                value["notifications"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n["id"].as_u64().unwrap()),
            ),
            _ => {}
        }
    }
    assert_eq!(held, expected);
    let _ = client.disconnect().await;
    hub.stop().await;
}

/// What a catch-up to a client that stops reading costs the hub: how many of a 72 MB
/// backlog (2,000 notifications of about 36 KB) it sent, and how much it grew (MiB).
async fn backlog_to_a_deaf_client(transport: TransportType, over: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--publish-rate", "100000", "--publish-burst", "100000"];
    let hub = belfry_testkit::Hub::start_with(dir.path(), belfry_testkit::free_port(), &args).await;
    let publisher = hub.publisher();
    let mut tasks = Vec::new();
    for p in 0..8 {
        let publisher = publisher.clone();
        tasks.push(tokio::spawn(async move {
            for i in (p..2000).step_by(8) {
                publisher
                    .publish(json!({
                        "to": ["user:sam"], "title": format!("backlog {i}"),
                        "body": "x".repeat(4000), "data": {"blob": "y".repeat(32_000)},
                    }))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rss_before = hub.rss_kib().unwrap();
    let sent_before = hub.metric("belfry_catch_up_notifications_total").await;
    // A client that reads nothing after the first batch.
    let token = belfry_testkit::token("sam");
    let client = deaf_client_over(&hub.url, json!({"token": token, "cursor": 0}), transport).await;
    // Time for the hub to send all it would.
    let mut rss_peak = rss_before;
    for _ in 0..40 {
        rss_peak = rss_peak.max(hub.rss_kib().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = hub.metric("belfry_catch_up_notifications_total").await - sent_before;
    let grew_mib = rss_peak.saturating_sub(rss_before) / 1024;
    eprintln!("{over}: {sent} of 2,000 sent, the hub grew by {grew_mib} MiB");
    drop(client);
    (sent, grew_mib)
}

/// A device connects with cursor 0 over a large backlog and stops reading: the hub sends
/// the next batch of its catch-up only once what it sent has mostly left for the
/// connection, so it holds about a page of it, not the whole backlog. (Unpaced, the
/// socket's buffer alone would hold 128 batches of about 7 of these: some 900, 32 MiB.)
#[tokio::test]
async fn a_catch_up_to_a_client_that_stops_reading_holds_a_page_not_the_backlog() {
    let (sent, grew_mib) = backlog_to_a_deaf_client(TransportType::Websocket, "WebSocket").await;
    assert!(
        sent < 500,
        "{sent} of the backlog's 2,000 went out to a client that reads nothing"
    );
    assert!(
        grew_mib < 32,
        "the hub grew by {grew_mib} MiB for a client that reads nothing"
    );
}

/// The same over long-polling, where the hub cannot see the connection: batches of one
/// notification each (8 KiB at most, or one when larger) fill the socket's buffer of 128
/// packets, not 128 batches of 256 KiB.
#[tokio::test]
async fn a_catch_up_over_long_polling_to_a_client_that_stops_polling_holds_its_buffer() {
    let (sent, grew_mib) = backlog_to_a_deaf_client(TransportType::Polling, "long-polling").await;
    assert!(
        sent < 300,
        "{sent} of the backlog's 2,000 went out to a client that polls no more"
    );
    assert!(
        grew_mib < 32,
        "the hub grew by {grew_mib} MiB for a client that polls no more"
    );
}

/// Every catch-up ends with the store's epoch, the HTTP list carries it too, and a
/// client that comes back with a cursor of another epoch is told to start over.
#[tokio::test]
async fn a_cursor_of_another_epoch_is_refused_with_epoch_changed() {
    let hub = TestHub::start().await;
    let t = token("eve");
    let mut s = Subscriber::connect(&hub.url, &t, None).await;
    let epoch = loop {
        if let Event::Synced(synced) = s.next().await {
            break synced.epoch.expect("an epoch");
        }
    };
    let (status, page) = hub
        .call(reqwest::Method::GET, "/notifications", &t, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["epoch"], json!(epoch));
    s.close().await;
    // The same epoch resumes as usual.
    let mut same =
        Subscriber::connect_auth(&hub.url, json!({"token": t, "cursor": 0, "epoch": epoch})).await;
    same.catch_up().await;
    same.close().await;
    let mut other = Subscriber::connect_auth(
        &hub.url,
        json!({"token": t, "cursor": 12, "epoch": "another"}),
    )
    .await;
    let refused = other.connect_error().await;
    assert!(refused.contains("epoch_changed"), "{refused}");
    hub.stop().await;
}

/// The store's epoch can change under a running hub: renewed by hand or by another node,
/// or because the store lost commits (a failover to a replica that lagged). The hub
/// follows within seconds: a client already in the new epoch is let in at once, the
/// hub's subscribers are sent away, and one that comes back in the old epoch is told to
/// start over.
#[tokio::test]
async fn a_running_hub_follows_its_stores_epoch() {
    let hub = TestHub::start().await;
    let t = token("ivy");
    for i in 0..3 {
        hub.publish_to("user:ivy", &format!("n{i}")).await;
    }
    let mut device = Subscriber::connect(&hub.url, &t, Some(0)).await;
    let first = device.synced_epoch().await;

    // Renewed by hand (`belfry-server epoch --renew`, or another node).
    let store = hub.open_store().await;
    let second = store.renew_epoch().await.unwrap().to_string();
    store.close().await;
    assert_ne!(second, first);
    // Told the new epoch elsewhere: let in before this hub's periodic check ran.
    let mut told =
        Subscriber::connect_auth(&hub.url, json!({"token": t, "cursor": 0, "epoch": second})).await;
    assert_eq!(told.synced_epoch().await, second);
    // The device of the old epoch is sent away, and told to start over when it returns.
    device.until_closed().await;
    let mut back =
        Subscriber::connect_auth(&hub.url, json!({"token": t, "cursor": 3, "epoch": first})).await;
    let refused = back.connect_error().await;
    assert!(refused.contains("epoch_changed"), "{refused}");
    told.close().await;

    // Settled in the second epoch; then the store loses its last two commits.
    let mut settled =
        Subscriber::connect_auth(&hub.url, json!({"token": t, "cursor": 3, "epoch": second})).await;
    assert_eq!(settled.synced_epoch().await, second);
    hub.lose_commits_after(1).await;
    settled.until_closed().await;
    let mut anew = Subscriber::connect(&hub.url, &t, Some(0)).await;
    let third = anew.synced_epoch().await;
    assert!(
        third != first && third != second,
        "{first} {second} {third}"
    );
    // The new epoch issues the lost ids again, and they are delivered live like any.
    let again = [
        hub.publish_to("user:ivy", "again 1").await,
        hub.publish_to("user:ivy", "again 2").await,
    ];
    assert_eq!(again, [2, 3], "the lost ids are issued again");
    let live = anew.live(2).await;
    assert_eq!(
        live.iter()
            .map(|n| (n.id, n.title.as_str()))
            .collect::<Vec<_>>(),
        [(2, "again 1"), (3, "again 2")]
    );
    anew.close().await;
    hub.stop().await;
}
