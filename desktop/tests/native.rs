//! The real tray app under Xvfb with its own D-Bus session and a real notification
//! daemon (dunst, which prints every notification it receives), against the real hub.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_client::{Dnd, LocalStore, Settings};
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn notifications_pop_up_natively_with_title_body_and_urgency() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let app = App::start(&desktop, data.path(), &hub.url, "ann").await;

    // Wait until the app is connected: a first notification arrives either way.
    hub.publish(json!({
        "to": ["user:ann"], "title": "Export ready", "body": "3 files", "priority": "high",
        "url": "https://example.com/exports/1",
        "actions": [{"label": "Download", "url": "https://example.com/exports/1.zip"}]
    }))
    .await;
    let p = desktop.wait_popup(|p| p.summary == "Export ready").await;
    assert_eq!(p.appname, "Belfry");
    assert_eq!(p.body, "3 files");
    assert_eq!(p.urgency, "NORMAL");
    assert!(
        p.actions.contains("Download"),
        "action buttons: {}",
        p.actions
    );

    hub.publish_to("ann", "Disk almost full", "urgent").await;
    let p = desktop
        .wait_popup(|p| p.summary == "Disk almost full")
        .await;
    assert_eq!(p.urgency, "CRITICAL");

    // Low priority lands in the history but does not pop up.
    let low = hub.publish_to("ann", "FYI only", "low").await;
    let marker = hub
        .publish_to("ann", "After the quiet one", "default")
        .await;
    desktop
        .wait_popup(|p| p.summary == "After the quiet one")
        .await;
    assert!(!desktop.popups().iter().any(|p| p.summary == "FYI only"));
    let held: Vec<u64> = history(data.path()).await.iter().map(|n| n.id).collect();
    assert!(held.contains(&low) && held.contains(&marker));
    app.kill().await;
}

#[tokio::test]
async fn after_being_away_a_catch_up_is_one_digest_and_a_hub_restart_loses_nothing() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();

    // Connect once, so the app holds a cursor.
    let app = App::start(&desktop, data.path(), &hub.url, "ben").await;
    hub.publish_to("ben", "Hello Ben", "default").await;
    desktop.wait_popup(|p| p.summary == "Hello Ben").await;
    app.kill().await;

    // Twelve arrive while the app is off: at launch, one summary instead of a flood.
    for i in 0..12 {
        hub.publish_to("ben", &format!("While away {i}"), "default")
            .await;
    }
    let app = App::start(&desktop, data.path(), &hub.url, "ben").await;
    desktop
        .wait_popup(|p| p.summary == "12 notifications while you were away")
        .await;
    assert!(
        !desktop
            .popups()
            .iter()
            .any(|p| p.summary.starts_with("While away"))
    );

    // The hub dies and comes back; what is published meanwhile shows up.
    hub.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.restart().await;
    hub.publish_to("ben", "After the restart", "high").await;
    desktop
        .wait_popup(|p| p.summary == "After the restart")
        .await;
    let titles: Vec<String> = history(data.path())
        .await
        .into_iter()
        .map(|n| n.title)
        .collect();
    assert_eq!(titles.len(), 14, "{titles:?}");
    app.kill().await;
}

#[tokio::test]
async fn do_not_disturb_holds_popups_back_but_keeps_history_and_urgent_breaks_through() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    {
        // Saved settings, as the Settings page would leave them: DND until turned off.
        let store = LocalStore::open(data.path()).await.unwrap();
        let settings = Settings {
            server_url: hub.url.clone(),
            token: token("cai"),
            dnd: Dnd::Always,
            ..Settings::default()
        };
        store.save_settings(&settings).await.unwrap();
        store.close().await;
    }
    let app = App::start(&desktop, data.path(), &hub.url, "cai").await;
    let quiet = hub.publish_to("cai", "Quiet please", "high").await;
    let urgent = hub.publish_to("cai", "Server down", "urgent").await;
    desktop.wait_popup(|p| p.summary == "Server down").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!desktop.popups().iter().any(|p| p.summary == "Quiet please"));
    let held: Vec<u64> = history(data.path()).await.iter().map(|n| n.id).collect();
    assert!(held.contains(&quiet) && held.contains(&urgent));
    app.kill().await;
}

#[tokio::test]
async fn the_tray_shows_the_unread_count_and_follows_reads_from_another_device() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let app = App::start(&desktop, data.path(), &hub.url, "dan").await;
    let a = hub.publish_to("dan", "One", "default").await;
    let b = hub.publish_to("dan", "Two", "default").await;
    hub.publish_to("dan", "Three", "default").await;
    desktop.wait_popup(|p| p.summary == "Three").await;

    let wait_label = |want: &'static str| {
        let desktop = &desktop;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let label = desktop.tray_label().await;
                if label.as_deref() == Some(want) {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "tray label {label:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_label("3").await;
    // Read on another device (over the hub's HTTP API): the tray follows.
    hub.read_as("dan", json!({"ids": [a, b]})).await;
    wait_label("1").await;
    hub.read_as("dan", json!({"up_to": b + 10})).await;
    wait_label("").await;
    app.kill().await;
}
