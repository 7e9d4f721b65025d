//! Crash loop: the hub is killed with SIGKILL again and again while publishers keep
//! publishing to 100 subscribers. Every publish the hub answered 201 must reach every
//! recipient, exactly once after de-duplication, each stream in id order.
#![allow(clippy::unwrap_used)]

use belfry_bench::client::Target;
use belfry_bench::pool::{Pool, PoolConfig};
use belfry_testkit::{Hub, eventually};
use rand::Rng;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

const USERS: usize = 25;
const DEVICES: usize = 4;
const KILLS: usize = 4;
const PUBLISHERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_again_and_again_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path()).await;
    let users: Vec<String> = (0..USERS).map(|u| format!("crash{u}")).collect();
    let tokens: Vec<String> = users.iter().map(|u| belfry_bench::token(u)).collect();
    let targets = tokens
        .iter()
        .flat_map(|t| std::iter::repeat_n(t.clone(), DEVICES))
        .map(|token| {
            let target = Target {
                hub: hub.addr(),
                token,
                source: None,
            };
            (target, Some(0))
        })
        .collect();
    let pool = Pool::spawn(
        targets,
        &PoolConfig {
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(500),
            keep_ids: true,
            retry_refused: false,
            ..PoolConfig::default()
        },
    );
    let clients = (USERS * DEVICES) as u64;
    eventually("every subscriber connected", || async {
        (pool.connected() == clients).then_some(())
    })
    .await;

    // Publishers: random single users, now and then everyone; a refused or unanswered
    // publish (the hub is down) is not counted and the next one is tried.
    let running = Arc::new(AtomicBool::new(true));
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (publisher, running, users) = (hub.publisher(), running.clone(), users.clone());
        publishers.push(tokio::spawn(async move {
            let mut answered: Vec<(u64, Option<usize>)> = Vec::new();
            let mut failed = 0_u64;
            while running.load(Relaxed) {
                let pick = rand::thread_rng().gen_range(0..=users.len() * 2);
                let to = users.get(pick).map(|_| pick);
                let target = to.map_or("all".to_owned(), |u| format!("user:{}", users[u]));
                let body = json!({"to": [target], "title": format!("n{}", answered.len())});
                match publisher.try_publish(body).await {
                    Ok(id) => answered.push((id, to)),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (answered, failed)
        }));
    }
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        hub.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.restart().await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    running.store(false, Relaxed);
    let mut answered = Vec::new();
    let mut failed = 0;
    for p in publishers {
        let (a, f) = p.await.unwrap();
        answered.extend(a);
        failed += f;
    }

    // What each user should hold: every answered publish to them or to everyone.
    let mut expected: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for u in 0..USERS {
        expected.insert(u, BTreeSet::new());
    }
    for &(id, to) in &answered {
        match to {
            Some(u) => {
                expected.get_mut(&u).unwrap().insert(id);
            }
            None => expected.values_mut().for_each(|s| {
                s.insert(id);
            }),
        }
    }
    // The hub's own record (it may also hold publishes whose answer the kill swallowed).
    let mut stored: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
    for (u, token) in tokens.iter().enumerate() {
        stored.insert(u, hub.all_ids(token).await.into_iter().collect());
    }
    let want_total: u64 = stored.values().map(|s| s.len() as u64).sum::<u64>() * DEVICES as u64;
    eventually(
        "every subscriber holds what the hub stored for it",
        || async { (pool.distinct() >= want_total).then_some(()) },
    )
    .await;
    let subs = pool.stop().await;

    let mut lost = 0;
    let (mut delivered, mut frames, mut out_of_order, mut connects) = (0, 0, 0, 0);
    for (i, sub) in subs.iter().enumerate() {
        let user = i / DEVICES;
        let held: BTreeSet<u64> = sub.tally.held.iter().copied().collect();
        lost += expected[&user].difference(&held).count();
        assert_eq!(
            held, stored[&user],
            "device {i} of {} holds other ids than the hub",
            users[user]
        );
        delivered += held.len() as u64;
        frames += sub.tally.frames;
        out_of_order += sub.tally.out_of_order;
        connects += sub.tally.connects;
    }
    let expected_deliveries: u64 =
        expected.values().map(|s| s.len() as u64).sum::<u64>() * DEVICES as u64;
    println!(
        "crash loop: {KILLS} kills, {clients} subscribers, published (answered 201) {}, \
         unanswered attempts {failed}, expected deliveries {expected_deliveries}, \
         delivered {delivered}, lost {lost}, duplicated before dedup {}, out of order {out_of_order}, \
         connects {connects}",
        answered.len(),
        frames - delivered,
    );
    assert_eq!(lost, 0, "answered publishes that never arrived");
    assert_eq!(out_of_order, 0, "a stream went backwards");
    assert!(answered.len() > 100, "too few publishes to mean anything");
    assert!(
        connects >= clients * KILLS as u64,
        "subscribers did not reconnect after each kill"
    );
}
