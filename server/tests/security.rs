//! Security checks: what one user's token can see of another's (nothing), and every way
//! a credential can be wrong (forged, expired, `alg: none`, wrong secret, the wrong kind),
//! at both doors (the Socket.IO handshake and the HTTP API). Oversize and deeply nested
//! input is refused without harm to the hub or its store.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Every event a subscriber receives until the notification `sentinel` arrives live
/// (emits to one socket keep their order, so whatever was sent before it is in).
async fn events_until(s: &mut Subscriber, sentinel: u64) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = s.next().await;
        let last = matches!(&e, Event::Live(n) if n.id == sentinel);
        seen.push(e);
        if last {
            return seen;
        }
    }
}

fn live_ids(events: &[Event]) -> BTreeSet<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Live(n) => Some(n.id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn alice_never_sees_what_belongs_to_bob() {
    let hub = TestHub::start().await;
    let alice_token = token_with_topics("alice", &["team.*"]);
    let bob_token = token("bob");
    let mut alice = synced_subscriber(&hub.url, &alice_token, Some(0)).await;
    let mut bob = synced_subscriber(&hub.url, &bob_token, Some(0)).await;
    let mut bob_phone = synced_subscriber(&hub.url, &bob_token, Some(0)).await;

    // Bob's private topic: alice's token does not allow it, through either door.
    assert_eq!(
        bob.request("subscribe", json!({"topic": "payroll"})).await,
        json!({"ok": true})
    );
    assert_eq!(
        code(
            &alice
                .request("subscribe", json!({"topic": "payroll"}))
                .await
        ),
        "topic_not_allowed"
    );
    let (status, body) = hub
        .call(Method::PUT, "/subscriptions/payroll", &alice_token, None)
        .await;
    assert_eq!((status, code(&body)), (403, "topic_not_allowed"), "{body}");
    assert_eq!(
        alice
            .request("subscribe", json!({"topic": "team.web"}))
            .await,
        json!({"ok": true})
    );

    let mut bobs = Vec::new();
    for i in 0..3 {
        bobs.push(hub.publish_to("user:bob", &format!("for bob {i}")).await);
    }
    for i in 0..2 {
        bobs.push(
            hub.publish_to("topic:payroll", &format!("payroll {i}"))
                .await,
        );
    }
    let everyone = hub.publish_to("all", "for everyone").await;
    let alices = [
        hub.publish_to("user:alice", "for alice").await,
        hub.publish_to("topic:team.web", "team").await,
    ];
    let sentinel = hub.publish_to("user:alice", "sentinel").await;
    let bob_sentinel = hub.publish_to("user:bob", "bob sentinel").await;

    let seen = events_until(&mut alice, sentinel).await;
    let want: BTreeSet<u64> = [everyone, alices[0], alices[1], sentinel].into();
    assert_eq!(live_ids(&seen), want, "alice live: {seen:?}");
    let bob_seen = events_until(&mut bob, bob_sentinel).await;
    let mut bob_want: BTreeSet<u64> = bobs.iter().copied().collect();
    bob_want.extend([everyone, bob_sentinel]);
    assert_eq!(live_ids(&bob_seen), bob_want);

    // Bob reads on one device: his phone hears of it, alice hears nothing.
    let (status, _) = hub.mark_read(&bob_token, json!({"ids": &bobs[..2]})).await;
    assert_eq!(status, 200);
    let read = loop {
        if let Event::Read(r) = bob_phone.next().await {
            break r;
        }
    };
    assert_eq!(read, json!({"ids": &bobs[..2]}));

    // Alice acknowledges everything up to the newest id, and once that is written (it
    // shows on the notification to everyone, which she has not read), marks everything
    // up to it read: only her own notifications change.
    let newest = bob_sentinel;
    let receipt_users = |id: u64| {
        let hub = &hub;
        async move {
            hub.receipts(id).await["receipts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["delivered_at"].is_string())
                .map(|r| r["user"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        alice.request("ack", json!({"up_to": newest})).await,
        json!({"ok": true})
    );
    belfry_testkit::eventually("alice's ack written", || async {
        receipt_users(everyone)
            .await
            .iter()
            .any(|u| u == "alice")
            .then_some(())
    })
    .await;
    let (status, body) = hub.mark_read(&alice_token, json!({"up_to": newest})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["marked"], 4, "{body}");
    // Alice tries to mark bob's ids read by id: nothing of bob's changes.
    assert_eq!(
        alice.request("read", json!({"ids": &bobs})).await,
        json!({"ok": true})
    );
    let second = hub.publish_to("user:alice", "second sentinel").await;
    let seen = events_until(&mut alice, second).await;
    let own_read = json!({"up_to": newest});
    assert!(
        seen.iter().all(|e| match e {
            Event::Live(n) => n.id == second,
            Event::Read(r) => *r == own_read,
            _ => false,
        }),
        "alice got more than her own: {seen:?}"
    );

    let (_, bob_list) = hub
        .call(Method::GET, "/notifications?limit=100", &bob_token, None)
        .await;
    for n in bob_list["notifications"].as_array().unwrap() {
        let id = n["id"].as_u64().unwrap();
        let read_by_bob = bobs[..2].contains(&id);
        assert_eq!(n["read"], read_by_bob, "bob's {id} after alice's reads");
    }

    // Alice's history and her catch-up hold only what is hers.
    let (_, list) = hub
        .call(Method::GET, "/notifications?limit=100", &alice_token, None)
        .await;
    let listed: BTreeSet<u64> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    let mut alice_all = want.clone();
    alice_all.insert(second);
    assert_eq!(listed, alice_all);
    let mut again = Subscriber::connect(&hub.url, &alice_token, Some(0)).await;
    let (caught, _, _) = again.catch_up().await;
    let caught: BTreeSet<u64> = caught.iter().map(|n| n.id).collect();
    assert_eq!(caught, alice_all);

    // Receipts of bob's notification name bob alone; alice's acks left no trace on it.
    assert_eq!(
        bob.request("ack", json!({"up_to": bob_sentinel})).await,
        json!({"ok": true})
    );
    // Acks are written in the background: wait for bob's, then look at who is named.
    belfry_testkit::eventually("bob's ack written", || async {
        (!receipt_users(bobs[3]).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(receipt_users(bobs[3]).await, ["bob"]);
    // Receipts and presence are for publishers: a user token gets neither.
    for path in [
        format!("/notifications/{}/receipts", bobs[0]),
        "/presence/bob".to_owned(),
    ] {
        let (status, body) = hub.call(Method::GET, &path, &alice_token, None).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    for s in [alice, bob, bob_phone, again] {
        s.close().await;
    }
    hub.stop().await;
}

/// Alice's real token with its payload replaced: the signature no longer matches.
fn tampered(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let payload = B64.encode(serde_json::to_vec(&claims).unwrap());
    parts[1] = &payload;
    parts.join(".")
}

#[tokio::test]
async fn forged_tokens_are_refused_at_both_doors() {
    // Dozens of forgeries from one address: lift the per-address throttle (tested on its
    // own below), which would otherwise refuse the real token at the end too.
    let hub = TestHub::start_with(|c| c.auth_failure_burst = 1_000).await;
    let alice = token_with_topics("alice", &["team.*"]);
    let hs512 = {
        let [_, payload, sig] = alice.split('.').collect::<Vec<_>>()[..] else {
            unreachable!()
        };
        format!(
            "{}.{payload}.{sig}",
            B64.encode(br#"{"alg":"HS512","typ":"JWT"}"#)
        )
    };
    let forged = [
        (
            tampered(&alice, |c| c["sub"] = json!("bob")),
            "token_bad_signature",
        ),
        (
            tampered(&alice, |c| c["topics"] = json!(["*"])),
            "token_bad_signature",
        ),
        (
            tampered(&alice, |c| c["exp"] = json!(99_999_999_999_i64)),
            "token_bad_signature",
        ),
        (hs512, "token_bad_signature"),
        (format!("{alice}x"), "token_bad_signature"),
        ("a.b".to_owned(), "token_malformed"),
        ("x".repeat(10_000), "token_malformed"),
    ];
    for (token, want) in &forged {
        let mut s = Subscriber::connect(&hub.url, token, Some(0)).await;
        let err = s.connect_error().await;
        assert!(err.contains(want), "{token:.40}: {err}");
        s.close().await;
        let (status, body) = hub.call(Method::GET, "/notifications", token, None).await;
        assert_eq!(status, 401, "{token:.40}: {body}");
        // Not a publish key either.
        let (status, body) = hub
            .call(
                Method::POST,
                "/notifications",
                token,
                Some(json!({"to": ["all"], "title": "forged"})),
            )
            .await;
        assert_eq!(
            (status, code(&body)),
            (401, "invalid_publish_key"),
            "{body}"
        );
    }
    // The real token still works and the forgeries left nothing behind.
    let (status, body) = hub.call(Method::GET, "/notifications", &alice, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["notifications"], json!([]));
    hub.stop().await;
}

#[tokio::test]
async fn a_socket_is_closed_when_its_token_expires() {
    let hub = TestHub::start().await;
    // Valid for about five more seconds (the hub allows 30 s of clock skew past `exp`).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let short = signer().sign(&json!({"sub": "eve", "exp": now - 25}));
    let mut s = synced_subscriber(&hub.url, &short, Some(0)).await;
    let lasting = token("eve");
    let mut other = synced_subscriber(&hub.url, &lasting, Some(0)).await;
    let closed = loop {
        match s.next_within(Duration::from_secs(10)).await {
            Some(Event::Closed) => break true,
            Some(_) => {}
            None => break false,
        }
    };
    assert!(closed, "the socket outlived its token");
    // Reconnecting with it is refused; the device with a valid token is unaffected.
    let mut again = Subscriber::connect(&hub.url, &short, Some(0)).await;
    assert!(again.connect_error().await.contains("token_expired"));
    let id = hub.publish_to("user:eve", "still here").await;
    assert_eq!(other.live(1).await[0].id, id);
    hub.stop().await;
}

#[tokio::test]
async fn oversize_and_deeply_nested_input_is_refused_and_the_hub_carries_on() {
    let hub = TestHub::start().await;
    let t = token("ivy");
    let mut s = synced_subscriber(&hub.url, &t, Some(0)).await;
    let mut bystander = synced_subscriber(&hub.url, &token("jon"), Some(0)).await;
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));

    // HTTP: nesting, size, and nesting inside a valid envelope.
    let raw = |body: String| {
        hub.http
            .post(hub.api("/notifications"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = raw(deep.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = raw(format!(
        r#"{{"to":["all"],"title":"x","data":{{"a":"{}"}}}}"#,
        "y".repeat(200_000)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 413);
    let r = raw(format!(
        r#"{{"to":["all"],"title":"x","data":{}{}}}"#,
        "{\"a\":".repeat(200),
        "}".repeat(200)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    // Socket events: a deep argument gets an error reply and the socket lives on.
    let reply = s
        .request(
            "ack",
            serde_json::from_str::<Value>("[[[[[[[[1]]]]]]]]").unwrap(),
        )
        .await;
    assert_eq!(code(&reply), "invalid_field");
    let deep_arg = format!("{{\"ids\":{}1{}}}", "[".repeat(120), "]".repeat(120));
    let reply = s
        .request("read", serde_json::from_str::<Value>(&deep_arg).unwrap())
        .await;
    assert_eq!(code(&reply), "invalid_field", "{reply}");
    let id = hub.publish_to("user:ivy", "after deep events").await;
    assert_eq!(s.live(1).await[0].id, id);

    // A message over the WebSocket size limit closes that socket only.
    let huge = json!({"ids": vec![1_u64; 400_000]});
    let _ = s.client.emit("read", huge).await;
    // (rust_socketio reports the transport's end as an error.)
    let ended = loop {
        match s.next_within(Duration::from_secs(10)).await {
            Some(Event::Closed | Event::Error(_)) => break true,
            Some(_) => {}
            None => break false,
        }
    };
    assert!(ended, "an oversize message did not end the socket");
    belfry_testkit::eventually("only the bystander connected", || async {
        let metrics = hub.metrics().await;
        metrics
            .lines()
            .any(|l| l == "belfry_connections 1")
            .then_some(())
    })
    .await;

    // Nobody else noticed, and the store is whole.
    let id = hub.publish_to("all", "after it all").await;
    assert_eq!(bystander.live(1).await[0].id, id);
    let health = hub
        .http
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (_, list) = hub.call(Method::GET, "/notifications", &t, None).await;
    assert_eq!(list["notifications"].as_array().unwrap().len(), 2);
    hub.stop().await;
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused_at_the_handshake() {
    let hub = TestHub::start().await;
    let other = belfry_server::auth::TokenSigner::new("some-other-secret-entirely");
    let expired = signer().sign(&json!({"sub": "vic", "exp": 1_000_000}));
    let none_alg = {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none"}"#),
            b.encode(br#"{"sub":"vic","exp":99999999999}"#)
        )
    };
    let cases = [
        (json!(null), "unauthorized"),
        (json!({"cursor": 1}), "unauthorized"),
        (json!({"token": "garbage"}), "token_malformed"),
        (
            json!({"token": other.mint("vic", None, 60)}),
            "token_bad_signature",
        ),
        (json!({"token": expired}), "token_expired"),
        (json!({"token": none_alg}), "token_bad_signature"),
        (json!({"token": KEY}), "token_malformed"),
        (
            json!({"token": token("vic"), "cursor": "abc"}),
            "unauthorized",
        ),
    ];
    for (auth, want) in cases {
        let mut s = Subscriber::connect_auth(&hub.url, auth.clone()).await;
        let err = s.connect_error().await;
        assert!(err.contains(want), "{auth}: {err}");
        s.close().await;
    }
    // The refused sockets joined nothing: a publish to all reaches only a real client.
    let mut ok = synced_subscriber(&hub.url, &token("vic"), Some(0)).await;
    let id = hub.publish_to("all", "after refusals").await;
    assert_eq!(ok.live(1).await[0].id, id);
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("belfry_auth_failures_total 8"),
        "{metrics}"
    );
    hub.stop().await;
}

/// Waits until the hub closes `stream` (end of file or reset); how long that took, or
/// `None` if it was still open after `limit`.
async fn closed_within(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt as _;
    let start = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(start + limit, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            // A response (408) before the close is fine.
            Ok(Ok(_)) => {}
        }
    }
}

/// Slowloris and its cousins: a connection that says nothing, one that sends its
/// headers a byte at a time, and one that stops in the middle of a body, are each closed
/// by the hub's timeouts instead of holding a connection forever.
#[tokio::test]
async fn silent_slow_and_stalled_connections_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let hub = TestHub::start_with(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.ping_interval = Duration::from_millis(500);
        c.ping_timeout = Duration::from_millis(500);
        c.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let limit = Duration::from_secs(8);

    let (mut silent, _keep) = tokio::net::TcpStream::connect(hub.addr)
        .await
        .unwrap()
        .into_split();

    let (mut slow_read, mut slow_write) = tokio::net::TcpStream::connect(hub.addr)
        .await
        .unwrap()
        .into_split();
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: belfry\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if slow_write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let (mut stalled_read, mut stalled_write) = tokio::net::TcpStream::connect(hub.addr)
        .await
        .unwrap()
        .into_split();
    stalled_write
        .write_all(
            format!(
                "POST /api/v1/notifications HTTP/1.1\r\nHost: belfry\r\n\
                 Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"to\": [\"all\"], "
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    let silent = closed_within(&mut silent, limit).await;
    let slow = closed_within(&mut slow_read, limit).await;
    let stalled = closed_within(&mut stalled_read, limit).await;
    trickle.abort();
    assert!(silent.is_some(), "a silent connection stayed open");
    assert!(
        slow.is_some(),
        "a connection sending its headers slowly stayed open"
    );
    assert!(
        stalled.is_some(),
        "a connection stalled mid-body stayed open"
    );
    // The hub serves everyone else all along.
    let (status, _) = hub
        .call(Method::GET, "/notifications", &token("ann"), None)
        .await;
    assert_eq!(status, 200);
    hub.stop().await;
}

/// A socket whose client reads nothing, so that its send buffer is full and not even a
/// disconnect packet fits: when its token expires it is closed all the same (before the
/// heartbeat would notice), and gets nothing more meanwhile.
#[tokio::test]
async fn a_socket_that_reads_nothing_is_closed_when_its_token_expires() {
    let hub = TestHub::start_with(|c| {
        c.publish_rate = 100_000.0;
        c.publish_burst = 100_000;
        // The heartbeat alone would take minutes to notice.
        c.ping_interval = Duration::from_secs(120);
        c.ping_timeout = Duration::from_secs(60);
        c.idle_timeout = Duration::from_secs(600);
    })
    .await;
    // Valid for about 12 more seconds (30 s of clock skew are allowed past `exp`).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let short = signer().sign(&json!({"sub": "mallory", "exp": now - 18}));
    // The kernel buffers fill and then the hub's buffer for the socket.
    let client = deaf_client(&hub.url, json!({"token": short, "cursor": 0})).await;
    let publisher = hub.publisher();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while publisher.metric("belfry_connections").await != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = "x".repeat(4000);
    let mut i = 0;
    while publisher.metric("belfry_lagged_total").await == 0 {
        for _ in 0..200 {
            hub.publish(json!({"to": ["user:mallory"], "title": format!("n{i}"), "body": body}))
                .await;
            i += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the buffer never filled"
        );
    }
    // Expiry closes it, whatever its buffer holds.
    let closed = belfry_testkit::eventually("the socket to be closed at expiry", || async {
        (publisher.metric("belfry_connections").await == 0).then_some(())
    });
    closed.await;
    drop(client);
    hub.stop().await;
}

/// One user cannot flood the hub: HTTP writes past the user's rate get 429 with
/// `Retry-After`, connects past the user's rate and devices past the maximum are refused
/// with a `connect_error` that says which; other users are not affected.
#[tokio::test]
async fn one_user_cannot_flood_writes_connects_or_devices() {
    let hub = TestHub::start_with(|c| {
        c.user_write_rate = 0.5;
        c.user_write_burst = 3;
        c.connect_rate = 0.2;
        c.connect_burst = 3;
        c.max_devices = 2;
    })
    .await;
    let (flo, gus) = (token("flo"), token("gus"));
    for i in 0..3 {
        let (status, body) = hub.mark_read(&flo, json!({"up_to": 10})).await;
        assert_eq!(status, 200, "write {i}: {body}");
    }
    let r = hub
        .http
        .post(hub.api("/notifications/read"))
        .bearer_auth(&flo)
        .json(&json!({"up_to": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&after), "Retry-After {after}");
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limited"
    );
    // Subscribing is a write too.
    let (status, body) = hub
        .call(Method::PUT, "/subscriptions/ops", &flo, None)
        .await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    // Reading is not, and another user writes freely.
    let (status, _) = hub.call(Method::GET, "/notifications", &flo, None).await;
    assert_eq!(status, 200);
    let (status, _) = hub.mark_read(&gus, json!({"up_to": 10})).await;
    assert_eq!(status, 200);

    // Devices: two connect, the third is refused.
    let first = synced_subscriber(&hub.url, &flo, Some(0)).await;
    let second = synced_subscriber(&hub.url, &flo, Some(0)).await;
    // The writes are the user's, whatever carries them: over Socket.IO too, on any of
    // their devices.
    for event in ["read", "subscribe", "unsubscribe"] {
        let payload = match event {
            "read" => json!({"up_to": 10}),
            _ => json!({"topic": "ops"}),
        };
        let reply = second.request(event, payload).await;
        assert_eq!(code(&reply), "rate_limited", "{event}: {reply}");
    }
    let mut third = Subscriber::connect(&hub.url, &flo, Some(0)).await;
    let refused = third.connect_error().await;
    assert!(refused.contains("too_many_devices"), "{refused}");
    // Connects: the burst of three is spent (two devices and the refused one).
    drop((first, second));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = Subscriber::connect(&hub.url, &flo, Some(0)).await;
    let refused = fourth.connect_error().await;
    assert!(refused.contains("rate_limited"), "{refused}");
    // Another user connects as usual.
    let gus_device = synced_subscriber(&hub.url, &gus, Some(0)).await;
    gus_device.close().await;
    hub.stop().await;
}

/// Devices connecting all at once cannot overrun the device limit: each takes its slot
/// before it is accepted, and gives it back when it goes.
#[tokio::test]
async fn devices_connecting_at_once_get_no_more_than_the_limit() {
    let hub = TestHub::start_with(|c| {
        c.connect_burst = 100;
        c.max_devices = 3;
    })
    .await;
    let hal = token("hal");
    let accepted_of = |tries: usize| {
        let (url, hal) = (hub.url.clone(), hal.clone());
        async move {
            let attempts = (0..tries).map(|_| {
                let (url, hal) = (url.clone(), hal.clone());
                tokio::spawn(async move {
                    let mut device = Subscriber::connect(&url, &hal, Some(0)).await;
                    loop {
                        match device.next().await {
                            Event::Synced(_) => return Some(device),
                            Event::Error(e) => {
                                assert!(e.contains("too_many_devices"), "{e}");
                                device.close().await;
                                return None;
                            }
                            _ => {}
                        }
                    }
                })
            });
            let mut accepted = Vec::new();
            for attempt in futures_util::future::join_all(attempts).await {
                accepted.extend(attempt.expect("attempt"));
            }
            accepted
        }
    };
    let first = accepted_of(12).await;
    assert_eq!(first.len(), 3, "12 at once against a limit of 3");
    for device in first {
        device.close().await;
    }
    // The slots come back with the disconnects.
    let mut again = Vec::new();
    for _ in 0..50 {
        again = accepted_of(3).await;
        if again.len() == 3 {
            break;
        }
        for device in again.drain(..) {
            device.close().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.len(), 3, "the slots were given back");
    for device in again {
        device.close().await;
    }
    hub.stop().await;
}

/// Guessing credentials from one address: after a burst of failures, the address is
/// refused (429) before its next credential is even checked, whether it tries a publish
/// key or a user token, over HTTP or Socket.IO; other addresses are not affected.
#[tokio::test]
async fn failed_authentications_are_slowed_per_client_address() {
    let hub = TestHub::start_with(|c| {
        c.auth_failure_rate = 30.0;
        c.auth_failure_burst = 3;
    })
    .await;
    // The burst, and one more failure that ends it.
    for _ in 0..4 {
        let (status, body) = hub
            .call(
                Method::GET,
                "/notifications/1/receipts",
                "bfk_guessed_key_number_1",
                None,
            )
            .await;
        assert_eq!((status, code(&body)), (401, "invalid_publish_key"));
    }
    // Out of failures: even the right key is refused now, before it is checked.
    let (status, body) = hub.call(Method::GET, "/presence/ann", KEY, None).await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    let (status, body) = hub
        .call(Method::GET, "/notifications", &token("ann"), None)
        .await;
    assert_eq!((status, code(&body)), (429, "rate_limited"));
    let mut socket = Subscriber::connect(&hub.url, &token("ann"), Some(0)).await;
    let refused = socket.connect_error().await;
    assert!(refused.contains("rate_limited"), "{refused}");
    // From another address, all is as usual.
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = elsewhere
        .get(hub.api("/presence/ann"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // And once the wait is over, the first address is heard again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = hub.call(Method::GET, "/presence/ann", KEY, None).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "refused for good");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.stop().await;
}

/// A handshake with an epoch the hub does not know makes the hub read its store again:
/// it is counted by the user's connect rate first, so a valid token cannot make every
/// handshake cost a read.
#[tokio::test]
async fn handshakes_with_an_unknown_epoch_count_against_the_connect_rate() {
    let hub = TestHub::start_with(|c| {
        c.connect_burst = 3;
        c.connect_rate = 0.1;
    })
    .await;
    let auth = json!({"token": token("una"), "cursor": 5, "epoch": "0123456789abcdef"});
    let mut refusals = Vec::new();
    for _ in 0..4 {
        let mut s = Subscriber::connect_auth(&hub.url, auth.clone()).await;
        refusals.push(s.connect_error().await);
        s.close().await;
    }
    for refusal in &refusals[..3] {
        assert!(refusal.contains("epoch_changed"), "{refusals:?}");
    }
    assert!(refusals[3].contains("rate_limited"), "{refusals:?}");
    hub.stop().await;
}
