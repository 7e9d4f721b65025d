//! The `belfry-server` binary as shells and supervisors use it: closed pipes, and what it
//! says when it cannot start.
#![allow(clippy::unwrap_used)]

use belfry_testkit::{KEY, SECRET, free_port, server_bin};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);

/// `belfry-server serve` with the test secret, publish key `key`, on a free loopback
/// port and the data dir `dir`.
fn serve(dir: &std::path::Path, key: &str) -> (Command, u16) {
    let port = free_port();
    let mut command = Command::new(server_bin());
    command
        .args(["serve", "--jwt-secret", SECRET, "--publish-key", key])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir);
    (command, port)
}

/// `belfry-server token | head -c 5`: the reader is gone before the token is written.
/// Nothing went wrong for the person who asked, so the command neither panics nor fails.
#[tokio::test]
async fn a_closed_stdout_is_no_failure_of_a_command() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let mut child = Command::new(server_bin())
            .args([
                "token",
                "--jwt-secret",
                SECRET,
                "--user",
                "alice",
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Both read ends closed before the process can write anything.
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "token with a closed stdout: {status}");
    }
}

/// A supervisor that closed the hub's stdout and stderr: the hub prints its first lines
/// and logs into closed pipes, and still serves and stops cleanly.
#[tokio::test]
async fn a_hub_whose_stdout_and_stderr_are_closed_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (mut command, port) = serve(dir.path(), KEY);
    let mut child = command
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = http.get(format!("{url}/healthz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the hub died with closed pipes: {status}");
        }
        assert!(tokio::time::Instant::now() < deadline, "never healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Requests that log (debug level) into the closed stderr.
    for _ in 0..20 {
        let r = http
            .post(format!("{url}/api/v1/notifications"))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"to": ["all"], "title": "into the void"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "stopped with {status}");
}

/// A hub that cannot reach its Redis says so, without the URL's password.
#[tokio::test]
async fn the_redis_password_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve(dir.path(), KEY)
        .0
        .args(["--database-url", "postgres://belfry@127.0.0.1:1/belfry"])
        .args(["--redis-url", "redis://default:hunter2-secret@127.0.0.1:1/"])
        .env("RUST_LOG", "debug")
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cannot reach Redis at redis://default:***@127.0.0.1:1/"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// A publish key shorter than 16 characters stops the hub at start with a message that
/// names the rule and not the key.
#[tokio::test]
async fn a_short_publish_key_stops_the_hub_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve(dir.path(), "short-key").0.output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("short-key"), "{err}");
}

/// `belfry-server epoch`: prints the store's epoch; `--renew` gives it a new one (after
/// restoring a backup on a machine that never ran the hub), which the hub then serves.
#[tokio::test]
async fn the_epoch_command_prints_and_renews_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(server_bin());
        command
            .arg("epoch")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path());
        command.output()
    };
    let out = tokio::time::timeout(WAIT, run(&[])).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(first.len(), 32, "{first}");
    let again = tokio::time::timeout(WAIT, run(&[])).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), first);
    let renewed = tokio::time::timeout(WAIT, run(&["--renew"]))
        .await
        .unwrap()
        .unwrap();
    assert!(renewed.status.success());
    let said = String::from_utf8(renewed.stdout).unwrap();
    let (old, new) = said.trim().split_once(" -> ").expect("old -> new");
    assert_eq!(old, first);
    assert_ne!(new, first);
    let now = tokio::time::timeout(WAIT, run(&[])).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(now.stdout).unwrap().trim(), new);
}
