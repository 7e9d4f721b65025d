//! The HTTP API and the socket events around it: read sync, subscriptions, idempotency,
//! expiry, receipts, presence, the publisher namespace, `/send`, and every bad input.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::FutureExt;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn read_state_syncs_between_devices_both_ways() {
    let hub = TestHub::start().await;
    let t = token("kim");
    let mut laptop = synced_subscriber(&hub.url, &t, Some(0)).await;
    let mut phone = synced_subscriber(&hub.url, &t, Some(0)).await;
    let a = hub.publish_to("user:kim", "a").await;
    let b = hub.publish_to("user:kim", "b").await;
    laptop.live(2).await;
    phone.live(2).await;

    // Read on the laptop over the socket: the phone hears it, the laptop does not echo.
    assert_eq!(
        laptop.request("read", json!({"ids": [a]})).await,
        json!({"ok": true})
    );
    loop {
        if let Event::Read(r) = phone.next().await {
            assert_eq!(r, json!({"ids": [a]}));
            break;
        }
    }
    // Read over HTTP (another device): both sockets hear it.
    let (status, body) = hub.mark_read(&t, json!({"up_to": b})).await;
    assert_eq!((status, body), (200, json!({"marked": 1})));
    for s in [&mut laptop, &mut phone] {
        loop {
            match s.next().await {
                Event::Read(r) => {
                    assert_eq!(r, json!({"up_to": b}));
                    break;
                }
                Event::Live(n) => panic!("unexpected {n:?}"),
                _ => {}
            }
        }
    }
    // The list shows the read state; reading again changes nothing.
    let (_, page) = hub.call(Method::GET, "/notifications", &t, None).await;
    assert!(
        page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["read"] == true)
    );
    let (_, again) = hub.mark_read(&t, json!({"ids": [a, b]})).await;
    assert_eq!(again, json!({"marked": 0}));
    // Another user cannot mark kim's notifications.
    let (_, other) = hub.mark_read(&token("lou"), json!({"ids": [a]})).await;
    assert_eq!(other, json!({"marked": 0}));
    hub.stop().await;
}

/// Every field of a notification reads back as it went out live: in a catch-up and in the
/// list (both read pages from the store, packed as one JSON value by the database) and on
/// a first connection (newest unread, read row by row), with each reader's read state.
#[tokio::test]
async fn every_field_reads_back_from_the_store_as_it_went_out_live() {
    let hub = TestHub::start().await;
    let (fay, gus) = (token("fay"), token("gus"));
    let (status, _) = hub
        .call(Method::PUT, "/subscriptions/ops", &fay, None)
        .await;
    assert_eq!(status, 200);
    let mut live = synced_subscriber(&hub.url, &fay, Some(0)).await;
    let mut other = synced_subscriber(&hub.url, &gus, Some(0)).await;
    hub.publish(json!({
        "to": ["user:fay"],
        "event": "deploy.waiting",
        "title": "Déploiement \"prod\" 🚀",
        "body": "line one\nline two\ttab \\ back",
        "priority": "high",
        "tags": ["ops", "ünïcode", "quote\"d"],
        "url": "https://example.com/d?x=1&y=2",
        "actions": [{"label": "Open", "url": "https://example.com/a"}],
        "data": {
            "big": u64::MAX, "min": i64::MIN, "n": 12345678901234_i64,
            "one": 1.0, "neg_zero": -0.0, "f": 1.5, "huge": 1e300, "tiny": 2.5e-300,
            "deep": {"list": [true, null, "s", [], {}]}, "e": "", "ctl": "a\u{0}b\u{1f}c",
            "keys": {"z": 1, "a": 2}
        }
    }))
    .await;
    hub.publish(json!({"to": ["topic:ops"], "title": "plain"}))
        .await;
    hub.publish(json!({"to": ["all"], "title": "everyone", "data": [1, 2]}))
        .await;
    let mut sent = live.live(3).await;
    let everyone = other.live(1).await;
    let (status, _) = hub
        .mark_read(&fay, json!({"ids": [sent[0].id, sent[2].id]}))
        .await;
    assert_eq!(status, 200);
    sent[0].read = true;
    sent[2].read = true;

    let mut device = Subscriber::connect(&hub.url, &fay, Some(0)).await;
    let (caught, _, _) = device.catch_up().await;
    assert_eq!(caught, sent);
    let (_, page) = hub.call(Method::GET, "/notifications", &fay, None).await;
    let listed: Vec<belfry_protocol::Notification> =
        serde_json::from_value(page["notifications"].clone()).unwrap();
    assert_eq!(listed, sent);
    // A first connection reads the newest unread: the one notification fay has not read.
    let mut first = Subscriber::connect(&hub.url, &fay, None).await;
    let (unread, _, _) = first.catch_up().await;
    assert_eq!(unread, vec![sent[1].clone()]);
    // Another reader of the same notification has their own read state.
    let mut gus_device = Subscriber::connect(&hub.url, &gus, Some(0)).await;
    let (theirs, _, _) = gus_device.catch_up().await;
    assert_eq!(theirs, everyone);
    assert!(!theirs[0].read);
    hub.stop().await;
}

#[tokio::test]
async fn subscriptions_are_stored_per_user_and_shared_by_devices() {
    let hub = TestHub::start().await;
    let t = token("max");
    let mut desktop = synced_subscriber(&hub.url, &t, Some(0)).await;
    let mut laptop = synced_subscriber(&hub.url, &t, Some(0)).await;

    // Subscribe over HTTP: both live sockets join the topic at once.
    let (status, body) = hub
        .call(Method::PUT, "/subscriptions/builds", &t, None)
        .await;
    assert_eq!((status, body), (200, json!({"topics": ["builds"]})));
    let id = hub.publish_to("topic:builds", "build green").await;
    assert_eq!(desktop.live(1).await[0].id, id);
    assert_eq!(laptop.live(1).await[0].id, id);

    // Subscribe over one socket: the other device is told and receives the topic too.
    assert_eq!(
        desktop
            .request("subscribe", json!({"topic": "alerts"}))
            .await,
        json!({"ok": true})
    );
    loop {
        if let Event::Subscribed(v) = laptop.next().await {
            assert_eq!(v, json!({"topic": "alerts"}));
            break;
        }
    }
    let alert = hub.publish_to("topic:alerts", "disk").await;
    assert_eq!(laptop.live(1).await[0].id, alert);
    assert_eq!(desktop.live(1).await[0].id, alert);

    // A new device sees the same list and catches up the topics' notifications.
    let (_, list) = hub.call(Method::GET, "/subscriptions", &t, None).await;
    assert_eq!(list, json!({"topics": ["alerts", "builds"]}));
    let mut phone = Subscriber::connect(&hub.url, &t, Some(0)).await;
    let (caught, _, _) = phone.catch_up().await;
    assert_eq!(
        caught.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![id, alert]
    );

    // Unsubscribe: no more deliveries.
    let (status, body) = hub
        .call(Method::DELETE, "/subscriptions/builds", &t, None)
        .await;
    assert_eq!((status, body), (200, json!({"topics": ["alerts"]})));
    hub.publish_to("topic:builds", "not any more").await;
    let marker = hub.publish_to("user:max", "marker").await;
    let got = desktop.live(1).await;
    assert_eq!(
        got[0].id, marker,
        "the unsubscribed topic's notification did not arrive"
    );
    hub.stop().await;
}

#[tokio::test]
async fn topics_outside_the_token_are_refused_and_never_joined() {
    let hub = TestHub::start_with(|c| c.max_subscriptions = 2).await;
    let t = token_with_topics("ned", &["team.*", "ops"]);
    let s = synced_subscriber(&hub.url, &t, Some(0)).await;
    let r = s.request("subscribe", json!({"topic": "finance"})).await;
    assert_eq!(code(&r), "topic_not_allowed");
    let (status, body) = hub
        .call(Method::PUT, "/subscriptions/finance", &t, None)
        .await;
    assert_eq!((status, code(&body)), (403, "topic_not_allowed"));
    let r = s.request("subscribe", json!({"topic": "bad/name"})).await;
    assert_eq!(code(&r), "invalid_field");
    assert_eq!(
        s.request("subscribe", json!({"topic": "team.a"})).await,
        json!({"ok": true})
    );
    assert_eq!(
        s.request("subscribe", json!({"topic": "ops"})).await,
        json!({"ok": true})
    );
    let (status, body) = hub
        .call(Method::PUT, "/subscriptions/team.b", &t, None)
        .await;
    assert_eq!((status, code(&body)), (403, "too_many_subscriptions"));

    // A subscription stored by a broader token is not joined by a narrower one.
    let broad = token("ned");
    hub.call(Method::DELETE, "/subscriptions/ops", &broad, None)
        .await;
    hub.call(Method::PUT, "/subscriptions/finance", &broad, None)
        .await;
    let mut narrow = synced_subscriber(&hub.url, &t, Some(0)).await;
    hub.publish_to("topic:finance", "secret numbers").await;
    let marker = hub.publish_to("user:ned", "marker").await;
    assert_eq!(narrow.live(1).await[0].id, marker);
    let (_, page) = hub.call(Method::GET, "/notifications", &t, None).await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1);
    hub.stop().await;
}

#[tokio::test]
async fn idempotency_key_repeats_return_the_first_id_and_notify_nobody() {
    let hub = TestHub::start().await;
    let mut s = synced_subscriber(&hub.url, &token("oli"), Some(0)).await;
    let body = json!({"to": ["user:oli"], "title": "once", "idempotency_key": "job-77"});
    let first = hub.publish(body.clone()).await;
    let (status, again) = hub
        .call(Method::POST, "/notifications", KEY, Some(body))
        .await;
    assert_eq!(status, 200);
    assert_eq!(again["id"].as_u64(), Some(first.id));
    assert_eq!(again["duplicate"], true);
    let marker = hub.publish_to("user:oli", "marker").await;
    let got = s.live(2).await;
    assert_eq!(
        got.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![first.id, marker]
    );
    hub.stop().await;
}

/// Publishes that arrive at once are stored together by the writer (one insert for all
/// their notifications, one for their targets, one for their keys): each still gets its
/// own dense id, its own targets and its own idempotency key.
#[tokio::test]
async fn publishes_arriving_at_once_each_keep_their_targets_and_keys() {
    use std::collections::{BTreeMap, BTreeSet};
    let hub = TestHub::start().await;
    let users = ["una", "vic", "wes", "xia"];
    let bodies: Vec<Value> = (0..120)
        .map(|i| {
            let user = users[i % users.len()];
            let mut body = json!({"to": [format!("user:{user}")], "title": format!("n{i}")});
            if i % 10 == 0 {
                body["to"] = json!([format!("user:{user}"), "user:zed"]);
            }
            if i % 3 == 0 {
                body["idempotency_key"] = json!(format!("key-{}", i % 9));
            }
            body
        })
        .collect();
    let answers = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| hub.call(Method::POST, "/notifications", KEY, Some(body.clone()))),
    )
    .await;
    // Per key: one stored (201), every other answered with its id (200, duplicate).
    let mut by_key: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut stored: BTreeMap<u64, &Value> = BTreeMap::new();
    for (body, (status, answer)) in bodies.iter().zip(&answers) {
        let id = answer["id"].as_u64().unwrap();
        if let Some(key) = body["idempotency_key"].as_str() {
            by_key.entry(key).or_default().insert(id);
        }
        match status {
            201 => assert!(stored.insert(id, body).is_none(), "id {id} given twice"),
            200 => assert_eq!(answer["duplicate"], true),
            other => panic!("publish answered {other}: {answer}"),
        }
    }
    assert_eq!(by_key.len(), 3);
    assert!(by_key.values().all(|ids| ids.len() == 1), "{by_key:?}");
    assert_eq!(stored.len(), 120 - 40 + 3);
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=83).collect::<Vec<u64>>(),
        "dense ids"
    );
    // Every user holds exactly the stored publishes addressed to them, as sent.
    for user in users.iter().chain(&["zed"]) {
        let target = json!(format!("user:{user}"));
        let expected: Vec<(u64, String)> = stored
            .iter()
            .filter(|(_, body)| body["to"].as_array().unwrap().contains(&target))
            .map(|(id, body)| (*id, body["title"].as_str().unwrap().to_owned()))
            .collect();
        let (_, page) = hub
            .call(Method::GET, "/notifications?limit=500", &token(user), None)
            .await;
        let held: Vec<(u64, String)> = page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap(),
                    n["title"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(held, expected, "{user}");
    }
    // 120 at once: the writer took some of them together (on either store).
    let metrics = hub.metrics().await;
    let joined = metrics
        .lines()
        .find_map(|l| l.strip_prefix("belfry_store_joined_writes_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert!(joined > 1, "{metrics}");
    hub.stop().await;
}

#[tokio::test]
async fn expired_notifications_are_never_caught_up_and_get_pruned() {
    let hub = TestHub::start().await;
    let short = hub
        .publish(json!({"to": ["user:pam"], "title": "short-lived", "ttl": 1}))
        .await;
    let long = hub.publish_to("user:pam", "long-lived").await;
    let created = short.created_at;
    let n = {
        let (_, page) = hub
            .call(Method::GET, "/notifications", &token("pam"), None)
            .await;
        page["notifications"][0].clone()
    };
    let expires: time::OffsetDateTime = time::OffsetDateTime::parse(
        n["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expires - created, time::Duration::seconds(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut s = Subscriber::connect(&hub.url, &token("pam"), Some(0)).await;
    let (caught, _, _) = s.catch_up().await;
    assert_eq!(caught.iter().map(|n| n.id).collect::<Vec<_>>(), vec![long]);
    // The pruner (every 200 ms here) deletes it: receipts then say not found.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = hub
            .call(
                Method::GET,
                &format!("/notifications/{}/receipts", short.id),
                KEY,
                None,
            )
            .await;
        if status == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn retention_cap_keeps_the_newest_per_target() {
    let hub = TestHub::start_with(|c| c.max_per_target = 5).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(hub.publish_to("user:quinn", &format!("n{i}")).await);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, page) = hub
            .call(Method::GET, "/notifications", &token("quinn"), None)
            .await;
        let got: Vec<u64> = page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect();
        if got == ids[7..] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cap never applied: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn receipts_record_first_delivery_and_read_per_user() {
    let hub = TestHub::start().await;
    let mut rae = synced_subscriber(&hub.url, &token("rae"), Some(0)).await;
    let id = hub
        .publish(json!({"to": ["user:rae", "user:sam"], "title": "receipts"}))
        .await
        .id;
    rae.live(1).await;
    let before = hub.receipts(id).await;
    assert_eq!(before["receipts"].as_array().unwrap().len(), 2);
    assert!(
        before["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["delivered_at"].is_null())
    );

    assert_eq!(
        rae.request("ack", json!({"up_to": id})).await,
        json!({"ok": true})
    );
    let (status, _) = hub.mark_read(&token("sam"), json!({"ids": [id]})).await;
    assert_eq!(status, 200);
    // Acks are written in the background, within about half a second.
    let after = belfry_testkit::eventually("rae's ack recorded", || async {
        let after = hub.receipts(id).await;
        after["receipts"][0]["delivered_at"]
            .is_string()
            .then_some(after)
    })
    .await;
    let receipts = after["receipts"].as_array().unwrap();
    assert_eq!(receipts[0]["user"], "rae");
    assert!(receipts[0]["delivered_at"].is_string());
    assert!(receipts[0]["read_at"].is_null());
    assert_eq!(receipts[1]["user"], "sam");
    assert!(
        receipts[1]["delivered_at"].is_string(),
        "reading implies delivery"
    );
    assert!(receipts[1]["read_at"].is_string());

    // A user token cannot read receipts; an unknown id is 404.
    let (status, body) = hub
        .call(
            Method::GET,
            &format!("/notifications/{id}/receipts"),
            &token("rae"),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_publish_key"));
    let (status, body) = hub
        .call(Method::GET, "/notifications/999999/receipts", KEY, None)
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    hub.stop().await;
}

#[tokio::test]
async fn presence_counts_connected_devices() {
    let hub = TestHub::start().await;
    let (_, p) = hub.call(Method::GET, "/presence/tia", KEY, None).await;
    assert_eq!(p, json!({"online": false, "devices": 0}));
    let a = synced_subscriber(&hub.url, &token("tia"), Some(0)).await;
    let (_, p) = hub.call(Method::GET, "/presence/tia", KEY, None).await;
    assert_eq!(p, json!({"online": true, "devices": 1}));
    let b = synced_subscriber(&hub.url, &token("tia"), Some(0)).await;
    let (_, p) = hub.call(Method::GET, "/presence/tia", KEY, None).await;
    assert_eq!(p, json!({"online": true, "devices": 2}));
    a.close().await;
    b.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, p) = hub.call(Method::GET, "/presence/tia", KEY, None).await;
        if p == json!({"online": false, "devices": 0}) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence stuck at {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = hub
        .call(Method::GET, "/presence/tia", &token("tia"), None)
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_publish_key"));
    hub.stop().await;
}

#[tokio::test]
async fn bad_publishes_get_clear_errors_and_store_nothing() {
    let hub = TestHub::start().await;
    let post = |body: String, ctype: &'static str, key: &'static str| {
        let r = hub
            .http
            .post(hub.api("/notifications"))
            .bearer_auth(key)
            .header("content-type", ctype)
            .body(body);
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body: Value = r.json().await.unwrap();
            (status, body, headers)
        }
    };
    let json = "application/json";
    let cases: Vec<(String, &str, &str, u16, &str)> = vec![
        (
            r#"{"to": ["user:a"], "title": "#.into(),
            json,
            KEY,
            400,
            "invalid_json",
        ),
        (
            r#"{"to": ["user:a"]}"#.into(),
            json,
            KEY,
            400,
            "missing_field",
        ),
        (r#"{"title": "x"}"#.into(), json, KEY, 400, "missing_field"),
        (
            r#"{"to": ["room:a"], "title": "x"}"#.into(),
            json,
            KEY,
            400,
            "unknown_target",
        ),
        (
            r#"{"to": [], "title": "x"}"#.into(),
            json,
            KEY,
            400,
            "invalid_field",
        ),
        (
            r#"{"to": ["user:a"], "title": 5}"#.into(),
            json,
            KEY,
            400,
            "invalid_field",
        ),
        (
            r#"{"to": ["user:a"], "title": "x", "priority": "loud"}"#.into(),
            json,
            KEY,
            400,
            "invalid_field",
        ),
        (
            format!(r#"{{"to": ["user:a"], "title": "{}"}}"#, "t".repeat(257)),
            json,
            KEY,
            400,
            "invalid_field",
        ),
        (
            format!(
                r#"{{"to": ["user:a"], "title": "x", "data": {}1{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            json,
            KEY,
            400,
            "invalid_json",
        ),
        (
            format!(
                r#"{{"to": ["user:a"], "title": "x", "data": {}1{}}}"#,
                "[".repeat(40),
                "]".repeat(40)
            ),
            json,
            KEY,
            400,
            "invalid_field",
        ),
        (
            format!(r#"{{"to": ["user:a"], "title": "{}"}}"#, "x".repeat(70_000)),
            json,
            KEY,
            413,
            "payload_too_large",
        ),
        (
            r#"{"to": ["user:a"], "title": "x"}"#.into(),
            "text/plain",
            KEY,
            415,
            "unsupported_media_type",
        ),
        (
            r#"{"to": ["user:a"], "title": "x"}"#.into(),
            json,
            "wrong-key",
            401,
            "invalid_publish_key",
        ),
    ];
    for (body, ctype, key, status, want) in cases {
        let (got, body, _) = post(body, ctype, key).await;
        assert_eq!((got, code(&body)), (status, want), "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A user token is not a publish key, and a publish key is not a user token.
    let (status, body) = hub
        .call(
            Method::POST,
            "/notifications",
            &token("uma"),
            Some(json!({"to": ["all"], "title": "x"})),
        )
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_publish_key"));
    let (status, body) = hub.call(Method::GET, "/notifications", KEY, None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    // No credentials at all.
    let r = hub
        .http
        .get(hub.api("/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // Bad query.
    let (status, body) = hub
        .call(Method::GET, "/notifications?limit=0", &token("uma"), None)
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_field"));
    let (status, body) = hub
        .call(Method::GET, "/notifications?after=-3", &token("uma"), None)
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_field"));
    // Nothing was stored by any of that, and the hub is healthy.
    let (_, page) = hub
        .call(Method::GET, "/notifications", &token("a"), None)
        .await;
    assert_eq!(page["notifications"], json!([]));
    let health = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    hub.stop().await;
}

#[tokio::test]
async fn bad_socket_events_get_error_replies_and_the_socket_lives_on() {
    let hub = TestHub::start_with(|c| {
        c.socket_event_rate = 1.0;
        c.socket_event_burst = 8;
    })
    .await;
    let mut s = synced_subscriber(&hub.url, &token("wes"), Some(0)).await;
    assert_eq!(
        code(&s.request("ack", json!({"up_to": "x"})).await),
        "invalid_field"
    );
    assert_eq!(
        code(&s.request("read", json!({"all": true})).await),
        "invalid_field"
    );
    assert_eq!(
        code(&s.request("subscribe", json!("deploys")).await),
        "invalid_field"
    );
    assert_eq!(
        code(&s.request("sync", json!({"cursor": -1})).await),
        "invalid_field"
    );
    assert_eq!(
        code(&s.request("ack", json!([[[[1]]]])).await),
        "invalid_field"
    );
    // Exhaust the event budget: rate_limited, not a disconnect.
    let mut limited = 0;
    for _ in 0..10 {
        if code(&s.request("read", json!({"ids": []})).await) == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 5, "only {limited} refused");
    // Acks are not counted: a client acks every batch it stores.
    for i in 0..20 {
        assert_eq!(
            s.request("ack", json!({"up_to": i})).await,
            json!({"ok": true})
        );
    }
    // Heartbeats are: the budget is spent, so a heartbeat is refused too.
    assert_eq!(
        code(&s.request("heartbeat", json!({})).await),
        "rate_limited"
    );
    let id = hub.publish_to("user:wes", "still connected").await;
    assert_eq!(s.live(1).await[0].id, id);
    hub.stop().await;
}

#[tokio::test]
async fn publish_rate_limit_answers_429_with_retry_after() {
    let hub = TestHub::start_with(|c| {
        c.publish_rate = 1.0;
        c.publish_burst = 3;
    })
    .await;
    let body = json!({"to": ["user:xia"], "title": "x"});
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = hub
            .http
            .post(hub.api("/notifications"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            assert_eq!(code(&body), "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[201, 201, 201]);
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let (_, page) = hub
        .call(Method::GET, "/notifications", &token("xia"), None)
        .await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 3);
    hub.stop().await;
}

#[tokio::test]
async fn publisher_namespace_notifies_in_all_three_forms() {
    let hub = TestHub::start().await;
    let mut yan = synced_subscriber(&hub.url, &token("yan"), Some(0)).await;
    let mut zoe = synced_subscriber(&hub.url, &token("zoe"), Some(0)).await;
    let publisher = client_builder(&hub.url, "/publisher", json!({"key": KEY}))
        .connect()
        .await
        .unwrap();
    // The transport connects before the namespace does; the first emit may need a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = emit_with_reply(
        &publisher,
        "notify",
        json!({"to": ["user:yan"], "title": "via socket"}),
    )
    .await;
    let id = r["id"].as_u64().expect("an id");
    assert_eq!(yan.live(1).await[0].id, id);

    let bad = emit_with_reply(&publisher, "notify", json!({"to": ["user:yan"]})).await;
    assert_eq!(code(&bad), "missing_field");

    publisher
        .emit(
            "notify-user",
            rust_socketio::Payload::Text(vec![
                json!("zoe"),
                json!("invoice.paid"),
                json!({"message": "Paid: 12 EUR", "amount": 12}),
            ]),
        )
        .await
        .unwrap();
    let n = zoe.live(1).await.remove(0);
    assert_eq!(
        (n.event.as_str(), n.title.as_str(), n.body.as_str()),
        ("invoice.paid", "invoice.paid", "Paid: 12 EUR")
    );
    assert_eq!(n.data["amount"], 12);

    publisher
        .emit(
            "notify-users",
            rust_socketio::Payload::Text(vec![
                json!(["yan", "zoe"]),
                json!("chat.message"),
                json!({"title": "New message"}),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(yan.live(1).await[0].title, "New message");
    assert_eq!(zoe.live(1).await[0].title, "New message");
    let _ = publisher.disconnect().await;

    // A wrong key, or a user token, is refused.
    for auth in [
        json!({"key": "nope"}),
        json!({"key": token("yan")}),
        json!(null),
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = client_builder(&hub.url, "/publisher", auth)
            .on("error", move |p, _| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(format!("{p:?}"));
                }
                .boxed()
            })
            .connect()
            .await
            .unwrap();
        let err = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(
            err.contains("invalid_publish_key") || err.contains("unauthorized"),
            "{err}"
        );
        let _ = c.disconnect().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn send_compat_endpoint_accepts_the_socket_io_notify_form() {
    let hub = TestHub::start().await;
    let t = token("ada");
    hub.call(Method::PUT, "/subscriptions/ops", &t, None).await;
    hub.call(Method::PUT, "/subscriptions/ci", &t, None).await;
    let mut ada = synced_subscriber(&hub.url, &t, Some(0)).await;

    let r = hub
        .http
        .post(format!("{}/send", hub.url))
        .header("notification_secret", KEY)
        .form(&[
            ("notification", "Backup finished"),
            ("channel[]", "ops"),
            ("channel[]", "ci"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let n = ada.live(1).await.remove(0);
    assert_eq!(
        (n.title.as_str(), n.topic.as_deref()),
        ("Backup finished", Some("ops"))
    );

    let r = hub
        .http
        .post(format!("{}/send", hub.url))
        .header("notification_secret", KEY)
        .json(&json!({"channel": "ops", "notification": {"title": "Disk", "body": "95%", "priority": "urgent"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let n = ada.live(1).await.remove(0);
    assert_eq!((n.title.as_str(), n.body.as_str()), ("Disk", "95%"));
    assert_eq!(n.priority, belfry_protocol::Priority::Urgent);

    let r = hub
        .http
        .post(format!("{}/send", hub.url))
        .header("notification_secret", "wrong")
        .form(&[("notification", "x"), ("channel", "ops")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = hub
        .http
        .post(format!("{}/send", hub.url))
        .header("notification_secret", KEY)
        .form(&[("channel", "not a topic!")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    hub.stop().await;
}

#[tokio::test]
async fn metrics_and_health_report_activity() {
    let hub = TestHub::start().await;
    let mut s = synced_subscriber(&hub.url, &token("bea"), Some(0)).await;
    hub.publish_to("user:bea", "counted").await;
    s.live(1).await;
    let text = hub.metrics().await;
    for line in [
        "belfry_connections 1",
        "belfry_publishes_total 1",
        "belfry_deliveries_total 1",
        "belfry_publish_to_emit_seconds_count 1",
        "belfry_catch_up_batches_total 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let (status, body) = hub.call(Method::GET, "/nope", KEY, None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = hub.call(Method::DELETE, "/notifications", KEY, None).await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
    hub.stop().await;
}

/// Health is cheap: 64 clients asking `/healthz` as fast as they can get their answers
/// from a check made at most about once a second, and no health check is a write (so
/// none waits behind the publishes, or holds them up).
#[tokio::test]
async fn health_checks_are_shared_and_never_write() {
    let hub = TestHub::start_with(|c| c.prune_interval = Duration::from_secs(3600)).await;
    let publisher = hub.publisher();
    // The first prune runs at start; wait for the writer to be quiet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commits = publisher.metric("belfry_store_commits_total").await;
    let checks = publisher.metric("belfry_health_checks_total").await;
    let started = tokio::time::Instant::now();
    let storm = Duration::from_secs(3);
    let mut clients = Vec::new();
    for _ in 0..64 {
        let (http, url) = (hub.http.clone(), format!("{}/healthz", hub.url));
        clients.push(tokio::spawn(async move {
            let mut answered = 0u32;
            while started.elapsed() < storm {
                let r = http.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs();
    assert!(answered > 64, "{answered} answers");
    assert_eq!(
        publisher.metric("belfry_store_commits_total").await,
        commits,
        "a health check wrote to the store"
    );
    let made = publisher.metric("belfry_health_checks_total").await - checks;
    assert!(
        made <= elapsed + 2,
        "{made} store checks for {answered} health requests in {elapsed} s"
    );
    hub.stop().await;
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_their_publish_key() {
    let hub = TestHub::start_with(|c| c.publish_keys.push("bfk_second_backend".into())).await;
    let body = json!({"to": ["user:cal"], "title": "order", "idempotency_key": "order-1"});
    let first = hub.publish(body.clone()).await;
    let (status, other) = hub
        .call(
            Method::POST,
            "/notifications",
            "bfk_second_backend",
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        status, 201,
        "another backend's key is not a repeat: {other}"
    );
    assert_ne!(other["id"].as_u64(), Some(first.id));
    let (status, again) = hub
        .call(
            Method::POST,
            "/notifications",
            "bfk_second_backend",
            Some(body),
        )
        .await;
    assert_eq!((status, again["id"].clone()), (200, other["id"].clone()));
    hub.stop().await;
}

#[tokio::test]
async fn subscribing_while_a_device_connects_never_leaves_it_outside_the_topic() {
    let hub = TestHub::start().await;
    for round in 0..15 {
        let user = format!("racer{round}");
        let topic = format!("race{round}");
        let t = token(&user);
        // Connect and subscribe (from another device, over HTTP) at the same moment.
        let path = format!("/subscriptions/{topic}");
        let (sub, (status, _)) = tokio::join!(
            Subscriber::connect(&hub.url, &t, Some(0)),
            hub.call(Method::PUT, &path, &t, None),
        );
        assert_eq!(status, 200);
        let mut sub = sub;
        sub.catch_up().await;
        let id = hub
            .publish_to(&format!("topic:{topic}"), "topic news")
            .await;
        let got = sub.live(1).await;
        assert_eq!(
            got[0].id, id,
            "round {round}: the topic notification did not arrive"
        );
        sub.close().await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn cors_covers_the_api_and_socket_io_polling() {
    let hub = TestHub::start_with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    for path in ["/healthz", "/socket.io/?EIO=4&transport=polling"] {
        let r = hub
            .http
            .get(format!("{}{path}", hub.url))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some("https://app.example"),
            "{path}"
        );
    }
    let r = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    hub.stop().await;
}
