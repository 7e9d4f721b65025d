//! Desktop: the tray app beside an empty Tauri 2 tray app built the same way (the floor),
//! on a headless desktop (Xvfb, a private D-Bus session, dunst as the notification
//! daemon): memory and CPU at rest with the window closed and open, publish-to-popup
//! latency, and the app's private memory as its history grows.

use anyhow::{Context, bail};
use belfry_bench::latency::Latencies;
use belfry_bench::procfs::{self, Footprint};
use belfry_bench::report::{Better, Outcome};
use belfry_bench::system::System;
use belfry_testkit::desktop::{App, Desktop, app_bin};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const S: &str = "desktop";
const USER: &str = "desk0";

/// How long and how much.
#[derive(Debug, Clone)]
pub struct DesktopSizes {
    /// Wait after a start before measuring.
    pub settle: Duration,
    /// How long CPU at rest is measured.
    pub window: Duration,
    /// Notifications timed from publish to popup.
    pub popups: usize,
    /// Notifications the history grows to.
    pub history: usize,
}

/// Memory of a process tree and the CPU it used over a window at rest.
struct Rest {
    main: Footprint,
    tree: Footprint,
    processes: usize,
    cpu_percent: f64,
}

async fn at_rest(pid: u32, sizes: &DesktopSizes) -> anyhow::Result<Rest> {
    tokio::time::sleep(sizes.settle).await;
    let pids = procfs::tree(pid);
    let cpu = |pids: &[u32]| -> Duration { pids.iter().filter_map(|p| procfs::cpu_time(*p)).sum() };
    let before = cpu(&pids);
    tokio::time::sleep(sizes.window).await;
    let used = cpu(&pids).saturating_sub(before);
    let main = procfs::footprint(pid).context("the process ended")?;
    let tree = pids
        .iter()
        .filter_map(|p| procfs::footprint(*p))
        .fold(Footprint::default(), |a, b| a + b);
    Ok(Rest {
        main,
        tree,
        processes: pids.len(),
        cpu_percent: used.as_secs_f64() * 100.0 / sizes.window.as_secs_f64(),
    })
}

impl Rest {
    /// Records the main process's memory and the CPU at rest, under `label`.
    fn report(&self, out: &mut Outcome, label: &str) {
        let mem = [
            ("RSS", self.main.rss),
            ("private memory", self.main.private),
        ];
        for (what, kib) in mem {
            out.figure(
                S,
                &format!("{label}: {what}"),
                "MiB",
                mib(kib),
                Better::Lower,
            );
        }
        let cpu = format!("{label}: CPU at rest");
        out.figure(S, &cpu, "%", self.cpu_percent, Better::Lower);
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How many notifications the app holds in its history (read beside it: SQLite WAL).
async fn history_len(data_dir: &Path) -> u64 {
    let Ok(store) = belfry_client::LocalStore::open(data_dir).await else {
        return 0;
    };
    let n = store.history_len().await.unwrap_or(0);
    store.close().await;
    n
}

pub async fn run(system: &System, sizes: &DesktopSizes, out: &mut Outcome) -> anyhow::Result<()> {
    let empty_bin = belfry_testkit::workspace_bin("belfry-empty-tray", "BELFRY_EMPTY_TRAY_BIN");
    let desktop = Desktop::start().await;

    // The floor: Tauri 2 with a tray icon and nothing else.
    let mut empty = desktop
        .command(&empty_bin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", empty_bin.display()))?;
    let floor = at_rest(empty.id().context("empty tray pid")?, sizes).await?;
    empty.kill().await.ok();
    floor.report(out, "empty Tauri 2 tray app");

    // The tray app as autostart leaves it: connected, in the tray, window closed.
    let data = tempfile_dir()?;
    let hub_url = format!("http://{}", system.addr());
    let publisher = system.publisher();
    let mut app = App::launch(&desktop, &app_bin(), &data, &hub_url, USER, true, &[]);
    let pid = app.pid().context("app pid")?;
    let hello = json!({"to": [format!("user:{USER}")], "title": "hello", "body": "connected"});
    let started = Instant::now();
    publisher
        .try_publish(hello)
        .await
        .map_err(anyhow::Error::msg)?;
    while !desktop.arrivals().iter().any(|(_, s)| s == "hello") {
        if started.elapsed() > Duration::from_secs(60) || !app.running() {
            bail!("the app never showed its first notification: {}", app.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = at_rest(pid, sizes).await?;
    closed.report(out, "window closed");
    out.figure(
        S,
        "idle RSS over the empty tray app",
        "%",
        (closed.main.rss as f64 - floor.main.rss as f64) * 100.0 / floor.main.rss as f64,
        Better::Lower,
    );
    if closed.processes > 1 {
        out.note(S, format!("window closed: {} processes", closed.processes));
    }

    // When the app's Notify calls went over the session bus (by summary), to split a
    // popup's time between the app and the notification daemon.
    let notify_calls = watch_notify_calls(&desktop)?;

    // Publish to popup, open loop: each publish sent when due, timed from then.
    let interval = Duration::from_millis(250);
    let first = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut sends = tokio::task::JoinSet::new();
    let mut due = Vec::with_capacity(sizes.popups);
    for i in 0..sizes.popups {
        let at = first + interval * i as u32;
        tokio::time::sleep_until(at).await;
        due.push(at.into_std());
        let p = publisher.clone();
        sends.spawn(async move {
            p.try_publish(json!({"to": [format!("user:{USER}")], "title": format!("timed {i}"), "body": "latency"}))
                .await
                .map(|_| (i, Instant::now()))
        });
    }
    // When the hub answered each (stored it): tells the hub's part of a slow popup.
    let mut answered = vec![None; sizes.popups];
    while let Some(r) = sends.join_next().await {
        let (i, at) = r?.map_err(anyhow::Error::msg)?;
        answered[i] = Some(at);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    // (index, ms) of each timed popup that arrived.
    let timed = |arrivals: &[(Instant, String)]| -> Vec<(usize, f64)> {
        arrivals
            .iter()
            .filter_map(|(at, s)| {
                let i: usize = s.strip_prefix("timed ")?.parse().ok()?;
                Some((
                    i,
                    at.saturating_duration_since(*due.get(i)?).as_secs_f64() * 1000.0,
                ))
            })
            .collect()
    };
    let mut each = timed(&desktop.arrivals());
    while each.len() < sizes.popups && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        each = timed(&desktop.arrivals());
    }
    // The slowest, by index: whether they come first, together or at random.
    each.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = each
        .iter()
        .take(3)
        .map(|(i, ms)| {
            let since_due = |at: Instant| at.saturating_duration_since(due[*i]).as_secs_f64() * 1000.0;
            let stored = answered[*i].map_or("?".into(), |at| format!("{:.0}", since_due(at)));
            let called = notify_calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&format!("timed {i}"))
                .map_or("?".into(), |at| format!("{:.0}", since_due(*at)));
            format!("#{i} {ms:.0} ms (stored by the hub at {stored} ms, sent to the daemon by the app at {called} ms)")
        })
        .collect();
    out.note(
        S,
        format!(
            "publish to popup, slowest of {}: {}",
            each.len(),
            slowest.join(", ")
        ),
    );
    if each.is_empty() {
        bail!("none of {} timed notifications popped up", sizes.popups);
    }
    let popups = Latencies::new();
    for (_, ms) in &each {
        popups.record(Duration::from_secs_f64(ms / 1000.0));
    }
    let summary = popups.summary();
    let percentiles = [
        ("p50", summary.p50_ms),
        ("p99", summary.p99_ms),
        ("max", summary.max_ms),
    ];
    for (what, ms) in percentiles {
        let metric = format!("publish to popup: {what}");
        out.figure(S, &metric, "ms", ms, Better::Lower);
    }
    if each.len() < sizes.popups {
        out.note(
            S,
            format!(
                "{} of {} timed notifications popped up",
                each.len(),
                sizes.popups
            ),
        );
    }

    // The history grows, popups held back by do-not-disturb: private memory at each step.
    desktop.tray_click("Until I turn it off").await;
    let mut held = history_len(&data).await;
    let mut points = vec![(
        held as f64,
        mib(procfs::footprint(pid).context("app")?.private),
    )];
    let steps = 4;
    for step in 1..=steps {
        let goal = sizes.history * step / steps;
        let count = goal.saturating_sub(held as usize);
        let body =
            json!({"to": [format!("user:{USER}")], "title": "history", "body": "x".repeat(200)});
        super::publish_many(&publisher, body, count, 16).await?;
        let want = held + count as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while history_len(&data).await < want {
            if Instant::now() > deadline || !app.running() {
                bail!(
                    "the app's history stopped at {} of {want}",
                    history_len(&data).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        held = want;
        tokio::time::sleep(sizes.settle).await;
        let private = procfs::footprint(pid).context("app")?.private;
        points.push((held as f64, mib(private)));
    }
    out.line("desktop-history", points.clone());
    let (first_mib, last_mib) = (points[0].1, points[points.len() - 1].1);
    out.figure(
        S,
        &format!("window closed: private memory with {held} in history"),
        "MiB",
        last_mib,
        Better::Lower,
    );
    out.figure(
        S,
        &format!("private memory growth, history {} to {held}", points[0].0),
        "%",
        (last_mib - first_mib) * 100.0 / first_mib,
        Better::Lower,
    );
    app.kill().await;

    // The same history after a restart, window closed: what the app holds for a history
    // of that size, without whatever the burst that filled it left behind.
    let app = App::launch(&desktop, &app_bin(), &data, &hub_url, USER, true, &[]);
    let restarted = at_rest(app.pid().context("app pid")?, sizes).await?;
    out.figure(
        S,
        &format!("window closed, restarted with {held} in history: private memory"),
        "MiB",
        mib(restarted.main.private),
        Better::Lower,
    );
    app.kill().await;

    // The window open on that history: the app and its web processes.
    let app = App::launch(&desktop, &app_bin(), &data, &hub_url, USER, false, &[]);
    let open = at_rest(app.pid().context("app pid")?, sizes).await?;
    out.figure(
        S,
        "window open: RSS, with web processes",
        "MiB",
        mib(open.tree.rss),
        Better::Lower,
    );
    out.figure(
        S,
        "window open: PSS, with web processes",
        "MiB",
        mib(open.tree.pss),
        Better::Lower,
    );
    out.figure(
        S,
        "window open: private memory, with web processes",
        "MiB",
        mib(open.tree.private),
        Better::Lower,
    );
    out.figure(
        S,
        "window open: CPU at rest",
        "%",
        open.cpu_percent,
        Better::Lower,
    );
    out.note(S, format!("window open: {} processes", open.processes));
    app.kill().await;
    std::fs::remove_dir_all(&data).ok();
    Ok(())
}

/// When each notification summary was first sent to the daemon (a `Notify` method call
/// on the desktop's session bus), read from `dbus-monitor` as it runs.
type NotifyCalls = Arc<std::sync::Mutex<HashMap<String, Instant>>>;

fn watch_notify_calls(desktop: &Desktop) -> anyhow::Result<NotifyCalls> {
    let mut monitor = desktop
        .command("dbus-monitor")
        .args([
            "--session",
            "type='method_call',interface='org.freedesktop.Notifications',member='Notify'",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("dbus-monitor (apt install dbus-bin)")?;
    let stdout = monitor.stdout.take().context("dbus-monitor output")?;
    let calls: NotifyCalls = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        // Notify's arguments are app name, replaces id, icon, summary, ...: the summary
        // is the third string after the call's header line.
        let mut lines = BufReader::new(stdout).lines();
        let mut strings = None;
        while let Ok(Some(line)) = lines.next_line().await {
            let at = Instant::now();
            if line.starts_with("method call") {
                strings = Some(0);
            } else if let (Some(n), Some(text)) =
                (strings.as_mut(), line.trim().strip_prefix("string \""))
            {
                *n += 1;
                if *n == 3 {
                    let summary = text.trim_end_matches('"').to_owned();
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(summary)
                        .or_insert(at);
                    strings = None;
                }
            }
        }
        // Keeps the monitor alive (killed on drop) as long as it prints.
        drop(monitor);
    });
    Ok(calls)
}

/// A fresh data dir for the app.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "belfry-bench-desktop-{}-{}",
        std::process::id(),
        belfry_bench::latency::now_micros()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
