//! Durability across a crash: the real binary, killed with SIGKILL while publishes are in
//! flight, keeps every publish it answered 201; and a SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_testkit::{Hub, WAIT, token};
use common::{Subscriber, assert_ascending};
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test]
async fn sigkill_mid_stream_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path()).await;

    // Four publishers stream until the hub dies; each records what was answered 201.
    let mut publishers = Vec::new();
    for p in 0..4 {
        let publisher = hub.publisher();
        publishers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..100_000 {
                let body = json!({"to": ["user:kai"], "title": format!("p{p} #{i}")});
                // The first refusal or broken connection is the kill: stop there.
                match publisher.try_publish(body).await {
                    Ok(id) => acknowledged.push(id),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    // Let a few hundred land, then kill -9 while requests are in flight.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.metric("belfry_publishes_total").await < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing too slow"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.kill().await;
    let mut acknowledged = BTreeSet::new();
    for p in publishers {
        acknowledged.extend(p.await.unwrap());
    }
    assert!(acknowledged.len() >= 300);

    // Restart on the same data dir: every acknowledged publish is there, over HTTP and in
    // a socket catch-up, once and in order.
    hub.restart().await;
    let kai = token("kai");
    let stored = hub.all_ids(&kai).await;
    assert_ascending(&stored);
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    let lost: Vec<_> = acknowledged.difference(&stored_set).collect();
    println!(
        "acknowledged {} / stored after SIGKILL {} / lost {}",
        acknowledged.len(),
        stored.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost acknowledged publishes: {lost:?}");

    let mut sub = Subscriber::connect(&hub.url, &kai, Some(0)).await;
    let (caught, _, _) = sub.catch_up().await;
    let caught: Vec<u64> = caught.iter().map(|n| n.id).collect();
    assert_eq!(caught, stored);
    // And the restarted hub takes new publishes with higher ids.
    let id = hub.publish_to("user:kai", "after restart").await;
    assert!(id > *stored.last().unwrap());
    sub.close().await;
    hub.kill().await;
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path()).await;
    let lee = token("lee");
    let mut sub = Subscriber::connect(&hub.url, &lee, Some(0)).await;
    sub.catch_up().await;
    hub.publish_to("user:lee", "before stop").await;
    let status = hub.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    hub.restart().await;
    assert_eq!(hub.all_ids(&lee).await.len(), 1);
    hub.kill().await;
}
