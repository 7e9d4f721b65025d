//! The window, end to end: the real app's webview driven through WebDriver (tauri-driver
//! in front of WebKitWebDriver), on a headless desktop with a notification daemon, against
//! the real hub. With `BELFRY_SCREENSHOT=<path>` (`make screenshot`) it also saves a
//! screenshot of the window there; a plain test run writes nothing into the tree.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Child;

/// A W3C WebDriver session over plain HTTP.
struct Session {
    http: reqwest::Client,
    base: String,
}

/// WebKitWebDriver's answer when the page re-rendered an element between finding it and
/// using it (the list re-renders on every notification and keystroke).
const STALE: &str = "stale element reference";

impl Session {
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req.send().await.unwrap().json().await.unwrap();
        if r["value"]["error"].is_null() {
            Ok(r["value"].clone())
        } else {
            Err(r["value"].clone())
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let shown = body.clone();
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{path} {shown:?}: {e}"))
    }

    /// Calls `method` on `path` again while the answer is "stale element", up to WAIT.
    async fn call_fresh<F: std::future::Future<Output = Result<Value, Value>>>(
        &self,
        what: &str,
        attempt: impl Fn() -> F,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match attempt().await {
                Ok(v) => return v,
                Err(e) if e["error"] == STALE && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let query = json!({"using": "css selector", "value": css});
        let v = self
            .call_fresh(css, || {
                self.try_call(reqwest::Method::POST, "/elements", Some(query.clone()))
            })
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_object()
                    .unwrap()
                    .values()
                    .next()
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    /// Waits for at least `n` elements matching `css`.
    async fn wait_for(&self, css: &str, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self.find_all(css).await;
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never found {n} of {css:?} (got {})",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// `method` on `/element/{id}/{action}` for the first element matching `css`, found
    /// again if the page re-rendered it in between.
    async fn on_element(
        &self,
        css: &str,
        method: reqwest::Method,
        action: &str,
        body: Option<Value>,
    ) -> Value {
        self.call_fresh(css, || async {
            let el = self.wait_for(css, 1).await.remove(0);
            let path = format!("/element/{el}/{action}");
            self.try_call(method.clone(), &path, body.clone()).await
        })
        .await
    }

    async fn text_of(&self, css: &str) -> String {
        self.on_element(css, reqwest::Method::GET, "text", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until the first element matching `css` has text satisfying `ok`.
    async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let t = self.text_of(css).await;
            if ok(&t) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css:?} stayed {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.on_element(css, reqwest::Method::POST, "click", Some(json!({})))
            .await;
    }

    async fn set_value(&self, css: &str, value: &str) {
        self.on_element(css, reqwest::Method::POST, "clear", Some(json!({})))
            .await;
        // WebKitWebDriver refuses an empty text: clearing is all there is to do then.
        if !value.is_empty() {
            let text = json!({"text": value});
            self.on_element(css, reqwest::Method::POST, "value", Some(text))
                .await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap()
    }
}

/// tauri-driver for the app, in the desktop's home (start at login writes there).
async fn tauri_driver(desktop: &Desktop, data_dir: &std::path::Path) -> (Child, String) {
    let port = free_port();
    let native = free_port();
    let bin = std::env::var("TAURI_DRIVER")
        .unwrap_or_else(|_| format!("{}/.cargo/bin/tauri-driver", std::env::var("HOME").unwrap()));
    let child = desktop
        .command(bin)
        .args([
            "--port",
            &port.to_string(),
            "--native-port",
            &native.to_string(),
        ])
        .env("BELFRY_DESKTOP_DATA_DIR", data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("tauri-driver (cargo install tauri-driver --locked; make test does)");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.get(format!("{url}/status")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tauri-driver never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, url)
}

#[tokio::test]
async fn the_window_lists_marks_read_saves_settings_and_reconnects() {
    let desktop = Desktop::start().await;
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_dir.path()).await;
    let data = tempfile::tempdir().unwrap();
    for (title, body, priority, topic) in [
        ("Nightly backup finished", "12.4 GB in 6 min", "low", None),
        (
            "Deploy api v42 succeeded",
            "All 12 checks green",
            "default",
            Some("deploys"),
        ),
        (
            "Invoice #1042 paid",
            "Acme GmbH paid 1,200 EUR",
            "high",
            None,
        ),
    ] {
        let mut to = vec!["user:eli".to_owned()];
        if let Some(t) = topic {
            to = vec![format!("topic:{t}")];
            hub.http
                .put(format!("{}/api/v1/subscriptions/{t}", hub.url))
                .bearer_auth(token("eli"))
                .send()
                .await
                .unwrap();
        }
        hub.publish(json!({"to": to, "title": title, "body": body, "priority": priority, "url": "https://example.com/"}))
            .await;
    }

    let (_driver, url) = tauri_driver(&desktop, data.path()).await;
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let app = app_bin();
    let created: Value = http
        .post(format!("{url}/session"))
        .json(&json!({"capabilities": {"alwaysMatch": {
            "tauri:options": {
                "application": app,
                "args": ["--server", hub.url, "--token", token("eli")]
            }
        }}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let s = Session {
        http,
        base: format!("{url}/session/{id}"),
    };

    // The list shows what was published while the app was not running, newest first.
    s.wait_for("body[data-ready='true']", 1).await;
    s.wait_for(".notification", 3).await;
    assert!(
        s.text_of(".notification")
            .await
            .contains("Invoice #1042 paid")
    );
    s.wait_text("#status-text", |t| t.contains("up to date"))
        .await;
    assert_eq!(s.text_of("#unread-count").await, "3");

    // The page may call the app's own commands and listen to its events, nothing else:
    // not Tauri's core APIs, not the opener plugin (which would open any link).
    for command in [
        "plugin:app|version",
        "plugin:opener|open_url",
        "plugin:window|hide",
    ] {
        let answer = s
            .call(
                reqwest::Method::POST,
                "/execute/async",
                Some(json!({
                    "script": "const done = arguments[arguments.length - 1];\
                        window.__TAURI__.core.invoke(arguments[0], {url: 'file:///etc/passwd'})\
                        .then(() => done('allowed'), (e) => done('refused: ' + e));",
                    "args": [command],
                })),
            )
            .await;
        let answer = answer.as_str().unwrap_or_default().to_owned();
        assert!(
            answer.starts_with("refused") && answer.contains("not allowed"),
            "{command}: {answer}"
        );
    }

    // A live one appears without a reload.
    hub.publish(
        json!({"to": ["user:eli"], "title": "Build 311 is green", "body": "main, 4 min 12 s"}),
    )
    .await;
    s.wait_for(".notification", 4).await;
    s.wait_text("#unread-count", |t| t == "4").await;
    let shot = s.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "the screenshot is no PNG");
    if let Ok(path) = std::env::var("BELFRY_SCREENSHOT") {
        std::fs::write(&path, &shot).unwrap();
    }

    // Mark one read: the count drops, and the hub knows (another device would too).
    s.click(".notification.unread .mark-read").await;
    s.wait_text("#unread-count", |t| t == "3").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page: Value = hub
            .http
            .get(format!("{}/api/v1/notifications", hub.url))
            .bearer_auth(token("eli"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let read = page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["read"] == true)
            .count();
        if read == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read never reached the hub"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Search filters the list.
    s.set_value("#search", "invoice").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.find_all(".notification").await.len() != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "search did not filter"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.set_value("#search", "").await;

    // Settings: a wrong token is reported in plain words, the right one reconnects.
    s.click("button[data-tab='settings']").await;
    s.wait_for("#set-token", 1).await;
    s.set_value("#set-digest", "7").await;
    s.click("#set-autostart").await;
    s.set_value("#set-token", "not-a-token").await;
    s.click("#settings-save").await;
    s.wait_text("#settings-message", |t| t == "Saved.").await;
    s.wait_text("#status-text", |t| t.contains("token")).await;
    s.set_value("#set-token", &token("eli")).await;
    s.click("#settings-save").await;
    s.wait_text("#status-text", |t| t.contains("up to date"))
        .await;
    let saved = belfry_client::LocalStore::open(data.path())
        .await
        .unwrap()
        .settings()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(saved.digest_threshold, 7);
    assert!(saved.start_at_login);
    // Start at login: an XDG autostart entry that starts the app hidden in the tray.
    let entry = std::fs::read_to_string(desktop.home().join(".config/autostart/Belfry.desktop"))
        .expect("an autostart entry");
    assert!(entry.contains("--hidden"), "{entry}");

    let _ = s.http.delete(s.base.clone()).send().await;
}
