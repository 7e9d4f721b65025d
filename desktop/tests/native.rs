//! The real tray app under Xvfb with its own D-Bus session and a real notification
//! daemon (dunst, which prints every notification it receives), against the real hub.
#![allow(clippy::unwrap_used)]

mod common;

use belfry_client::{Dnd, LocalStore, Settings};
use belfry_testkit::eventually;
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

    notify(&hub, "ann", "Disk almost full", "urgent").await;
    let p = desktop
        .wait_popup(|p| p.summary == "Disk almost full")
        .await;
    assert_eq!(p.urgency, "CRITICAL");

    // Low priority lands in the history but does not pop up.
    let low = notify(&hub, "ann", "FYI only", "low").await;
    let marker = notify(&hub, "ann", "After the quiet one", "default").await;
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
    notify(&hub, "ben", "Hello Ben", "default").await;
    desktop.wait_popup(|p| p.summary == "Hello Ben").await;
    app.kill().await;

    // Twelve arrive while the app is off: at launch, one summary instead of a flood.
    for i in 0..12 {
        notify(&hub, "ben", &format!("While away {i}"), "default").await;
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
    notify(&hub, "ben", "After the restart", "high").await;
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
    let quiet = notify(&hub, "cai", "Quiet please", "high").await;
    let urgent = notify(&hub, "cai", "Server down", "urgent").await;
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
    let a = notify(&hub, "dan", "One", "default").await;
    let b = notify(&hub, "dan", "Two", "default").await;
    notify(&hub, "dan", "Three", "default").await;
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
    read_as(&hub, "dan", json!({"ids": [a, b]})).await;
    wait_label("1").await;
    read_as(&hub, "dan", json!({"up_to": b + 10})).await;
    wait_label("").await;
    app.kill().await;
}

/// Clicking a notification opens its link with the desktop's web-link handler: the test
/// desktop's stand-in browser, even on a machine where a real browser registered itself
/// as the system's handler (as Debian's chromium does): the desktop's own XDG
/// configuration comes first.
#[tokio::test]
async fn clicking_a_notification_opens_its_link_in_the_browser() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    // A browser installed system-wide and registered as the default for web links.
    let system = tempfile::tempdir().unwrap();
    let hijacked = system.path().join("hijacked.txt");
    let apps = system.path().join("share/applications");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::create_dir_all(system.path().join("xdg")).unwrap();
    let chromium = system.path().join("chromium.sh");
    std::fs::write(
        &chromium,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", hijacked.display()),
    )
    .unwrap();
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&chromium, executable).unwrap();
    std::fs::write(
        apps.join("chromium.desktop"),
        format!(
            "[Desktop Entry]\nType=Application\nName=Chromium\nExec={} %U\n\
             MimeType=x-scheme-handler/http;x-scheme-handler/https;text/html;\n",
            chromium.display()
        ),
    )
    .unwrap();
    let defaults = "[Default Applications]\nx-scheme-handler/http=chromium.desktop\n\
                    x-scheme-handler/https=chromium.desktop\n";
    std::fs::write(apps.join("mimeapps.list"), defaults).unwrap();
    std::fs::write(system.path().join("xdg/mimeapps.list"), defaults).unwrap();
    let data_dirs = format!(
        "{}:/usr/local/share:/usr/share",
        system.path().join("share").display()
    );
    let config_dirs = format!("{}:/etc/xdg", system.path().join("xdg").display());
    let app = App::start_with(
        &desktop,
        data.path(),
        &hub.url,
        "eva",
        &[
            ("XDG_DATA_DIRS", &data_dirs),
            ("XDG_CONFIG_DIRS", &config_dirs),
        ],
    )
    .await;
    hub.publish(
        json!({"to": ["user:eva"], "title": "Review requested", "url": "https://example.com/pr/7"}),
    )
    .await;
    desktop
        .wait_popup(|p| p.summary == "Review requested")
        .await;
    // Invoke the notification's default action, as a click on it would.
    let status = tokio::process::Command::new("dunstctl")
        .args(["action", "0"])
        .env("DBUS_SESSION_BUS_ADDRESS", &desktop.dbus)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    eventually("the link opened in the browser", || async {
        desktop
            .opened()
            .iter()
            .any(|l| l == "https://example.com/pr/7")
            .then_some(())
    })
    .await;
    assert!(
        !hijacked.exists(),
        "the system's browser took the link from the desktop's own handler"
    );
    app.kill().await;
}

/// Publishers' titles and bodies are text: a daemon that renders markup (dunst, here
/// configured to) shows them as written, never as a link or an image of theirs.
#[tokio::test]
async fn markup_in_a_notification_is_shown_as_text() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let app = App::start(&desktop, data.path(), &hub.url, "max").await;
    hub.publish(json!({
        "to": ["user:max"],
        "title": "<b>Urgent</b> & important",
        "body": "<a href=\"https://evil.example/\">Click</a> <img src=\"file:///etc/passwd\"/> <i>now</i>",
    }))
    .await;
    let popup = desktop.wait_popup(|p| p.summary.contains("Urgent")).await;
    // What dunst renders: its own bold for the title, and everything of the publisher's
    // as text.
    let shown = &popup.formatted;
    assert!(
        shown.starts_with("<b>") && shown.contains("&lt;b&gt;Urgent"),
        "{popup:#?}"
    );
    for markup in ["<a ", "<img", "<i>", "</b> &amp"] {
        assert!(!shown.contains(markup), "{markup} rendered: {popup:#?}");
    }
    assert!(
        shown.contains("&lt;a href=&quot;https://evil.example/&quot;&gt;Click"),
        "{popup:#?}"
    );
    app.kill().await;
}

#[tokio::test]
async fn a_second_launch_hands_over_to_the_first_and_exits() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let mut first = App::start(&desktop, data.path(), &hub.url, "fay").await;
    notify(&hub, "fay", "First is up", "default").await;
    desktop.wait_popup(|p| p.summary == "First is up").await;
    let second = tokio::process::Command::new(app_bin())
        .arg("--hidden")
        .env("DISPLAY", &desktop.display)
        .env("DBUS_SESSION_BUS_ADDRESS", &desktop.dbus)
        .env("BELFRY_DESKTOP_DATA_DIR", data.path())
        .env("RUST_LOG", "warn")
        .status();
    let status = tokio::time::timeout(WAIT, second)
        .await
        .expect("the second launch exits")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(first.running(), "the first instance must keep running");
    first.kill().await;
}

#[tokio::test]
async fn the_tray_menu_marks_all_read_sets_do_not_disturb_and_reconnects() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let app = App::start(&desktop, data.path(), &hub.url, "gus").await;
    notify(&hub, "gus", "First", "default").await;
    notify(&hub, "gus", "Second", "default").await;
    desktop.wait_popup(|p| p.summary == "Second").await;
    let until = |want: &'static str| {
        let desktop = &desktop;
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let line = desktop.tray_status_line().await;
                if line.contains(want) {
                    return line;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "status line {line:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    until("Connected · 2 unread").await;

    // Mark all read from the tray: here and on the hub.
    desktop.tray_click("Mark all read").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while desktop.tray_label().await.as_deref() != Some("") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the count never cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(desktop.tray_status_line().await, "Connected");
    let gus = token("gus");
    eventually("mark all read reached the hub", || async {
        hub.all_read(&gus).await.then_some(())
    })
    .await;

    // Do not disturb from the tray: quiet, except urgent.
    desktop.tray_click("Until I turn it off").await;
    until("do not disturb").await;
    notify(&hub, "gus", "Hush", "high").await;
    notify(&hub, "gus", "Fire", "urgent").await;
    desktop.wait_popup(|p| p.summary == "Fire").await;
    assert!(!desktop.popups().iter().any(|p| p.summary == "Hush"));

    // The status line follows the connection; Reconnect now reconnects at once.
    hub.kill().await;
    until("Offline").await;
    hub.restart().await;
    desktop.tray_click("Reconnect now").await;
    until("Connected").await;
    app.kill().await;
}

#[tokio::test]
async fn without_a_notification_daemon_the_app_says_so_and_keeps_everything() {
    let desktop = Desktop::start_with_daemon(false).await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    let mut app = App::start(&desktop, data.path(), &hub.url, "hal").await;
    let first = notify(&hub, "hal", "Nobody to show this", "high").await;
    eventually("the app reports the missing daemon", || async {
        app.log()
            .contains("Is a notification daemon running?")
            .then_some(())
    })
    .await;
    // Still running, still receiving, everything in the history.
    let second = notify(&hub, "hal", "Still here", "urgent").await;
    eventually("both notifications in the history", || async {
        let held: Vec<u64> = history(data.path()).await.iter().map(|n| n.id).collect();
        (held.contains(&first) && held.contains(&second)).then_some(())
    })
    .await;
    assert!(app.running());
    app.kill().await;
}
