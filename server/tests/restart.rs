//! Durability across a crash: the real binary, killed with SIGKILL while publishes are in
//! flight, keeps every publish it answered 201; and a SIGTERM stops it cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the built binary on a free port with the test secrets; returns it and its URL.
async fn spawn_hub(dir: &Path) -> (Child, String) {
    let mut child = Command::new(server_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--publish-key",
            KEY,
            "--jwt-secret",
            SECRET,
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("belfry-server listening on ") {
                return url.trim().to_owned();
            }
        }
        panic!("the hub exited before listening");
    })
    .await
    .expect("the hub starts in time");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn all_ids(http: &reqwest::Client, url: &str, user: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = http
            .get(format!(
                "{url}/api/v1/notifications?after={after}&limit=500"
            ))
            .bearer_auth(token(user))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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

#[tokio::test]
async fn sigkill_mid_stream_loses_no_acknowledged_publish() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let (mut hub, url) = spawn_hub(dir.path()).await;

    // Four publishers stream until the hub dies; each records what was answered 201.
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (http, url) = (http.clone(), url.clone());
        publishers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..100_000 {
                let r = http
                    .post(format!("{url}/api/v1/notifications"))
                    .bearer_auth(KEY)
                    .json(&json!({"to": ["user:kai"], "title": format!("p{p} #{i}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let body: Value = match r.json().await {
                            Ok(b) => b,
                            Err(_) => break,
                        };
                        acknowledged.push(body["id"].as_u64().unwrap());
                    }
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    // Let a few hundred land, then kill -9 while requests are in flight.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page: Value = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|t| {
                let n = t
                    .lines()
                    .find_map(|l| l.strip_prefix("belfry_publishes_total "))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                json!(n)
            })
            .unwrap();
        if page.as_u64().unwrap() >= 300 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing too slow"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.start_kill().unwrap();
    hub.wait().await.unwrap();
    let mut acknowledged = BTreeSet::new();
    for p in publishers {
        acknowledged.extend(p.await.unwrap());
    }
    assert!(acknowledged.len() >= 300);

    // Restart on the same data dir: every acknowledged publish is there, over HTTP and in
    // a socket catch-up, once and in order.
    let (mut hub, url) = spawn_hub(dir.path()).await;
    let stored = all_ids(&http, &url, "kai").await;
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

    let mut kai = Subscriber::connect(&url, &token("kai"), Some(0)).await;
    let (caught, _, _) = kai.catch_up().await;
    let caught: Vec<u64> = caught.iter().map(|n| n.id).collect();
    assert_eq!(caught, stored);
    // And the restarted hub takes new publishes with higher ids.
    let r: Value = http
        .post(format!("{url}/api/v1/notifications"))
        .bearer_auth(KEY)
        .json(&json!({"to": ["user:kai"], "title": "after restart"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r["id"].as_u64().unwrap() > *stored.last().unwrap());
    kai.close().await;
    hub.start_kill().unwrap();
    hub.wait().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_gracefully_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let (mut hub, url) = spawn_hub(dir.path()).await;
    let mut s = Subscriber::connect(&url, &token("lee"), Some(0)).await;
    s.catch_up().await;
    let r = http
        .post(format!("{url}/api/v1/notifications"))
        .bearer_auth(KEY)
        .json(&json!({"to": ["user:lee"], "title": "before stop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let pid = hub.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, hub.wait())
        .await
        .expect("stops in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let (mut hub, url) = spawn_hub(dir.path()).await;
    assert_eq!(all_ids(&http, &url, "lee").await.len(), 1);
    hub.start_kill().unwrap();
    hub.wait().await.unwrap();
}
