//! What the desktop suites share: the headless desktop and the app come from
//! belfry-testkit (`desktop`), the hub too; publishing and reading helpers and the app's
//! local history are here.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::{Value, json};
use std::path::Path;

#[allow(unused_imports)]
pub use belfry_testkit::desktop::{App, Desktop, Popup, app_bin};
#[allow(unused_imports)]
pub use belfry_testkit::{Hub, KEY, SECRET, WAIT, free_port, token, workspace_bin};

/// Publishes to one user with a priority; returns the id.
pub async fn notify(hub: &Hub, user: &str, title: &str, priority: &str) -> u64 {
    hub.publish(json!({
        "to": [format!("user:{user}")], "title": title, "body": format!("body of {title}"),
        "priority": priority
    }))
    .await
}

/// Marks read as `user` over the hub's HTTP API (another device).
pub async fn read_as(hub: &Hub, user: &str, body: Value) {
    assert_eq!(
        hub.post("/api/v1/notifications/read", &token(user), body)
            .await,
        200
    );
}

/// The app's local store, read from the test (SQLite WAL allows a second reader).
pub async fn history(data_dir: &Path) -> Vec<belfry_protocol::Notification> {
    let store = belfry_client::LocalStore::open(data_dir).await.unwrap();
    let h = store
        .history(&belfry_client::HistoryQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    store.close().await;
    h
}
