//! A headless desktop for end-to-end tests and benchmarks: Xvfb on a free display, a
//! private D-Bus session, dunst printing every notification it receives (each one
//! timestamped as it arrives, rendering markup as it does when configured so), and the
//! real tray app binary. Everything is started here and killed on drop.
//!
//! The desktop has a home of its own: its own XDG config, data and cache directories, and
//! in them a stand-in browser registered as the handler of web links, which writes down
//! what it was asked to open ([`Desktop::opened`]). So the tests hold on a developer's
//! desktop and on a machine with a real browser installed (whose registration would
//! otherwise take the links), and write nothing into the real home.

use crate::{WAIT, token, workspace_bin};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The environment that gives a program the desktop's home.
fn xdg_env(home: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("HOME", home.to_owned()),
        ("XDG_CONFIG_HOME", home.join(".config")),
        ("XDG_DATA_HOME", home.join(".local/share")),
        ("XDG_CACHE_HOME", home.join(".cache")),
    ]
}

/// A home with dunst's configuration (markup rendered in full, as many desktops do) and a
/// stand-in browser registered as the default handler of web links.
fn make_home() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    for dir in [".config/dunst", ".local/share/applications", ".cache"] {
        std::fs::create_dir_all(h.join(dir)).unwrap();
    }
    std::fs::write(
        h.join(".config/dunst/dunstrc"),
        "[global]\n    markup = full\n    format = \"<b>%s</b>\\n%b\"\n",
    )
    .unwrap();
    let opened = h.join("opened.txt");
    let browser = h.join("browser.sh");
    std::fs::write(
        &browser,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", opened.display()),
    )
    .unwrap();
    let executable = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&browser, executable).unwrap();
    std::fs::write(
        h.join(".local/share/applications/belfry-test-browser.desktop"),
        format!(
            "[Desktop Entry]\nType=Application\nName=Test browser\nExec={} %u\n\
             MimeType=x-scheme-handler/http;x-scheme-handler/https;text/html;\n",
            browser.display()
        ),
    )
    .unwrap();
    std::fs::write(
        h.join(".config/mimeapps.list"),
        "[Default Applications]\nx-scheme-handler/http=belfry-test-browser.desktop\n\
         x-scheme-handler/https=belfry-test-browser.desktop\ntext/html=belfry-test-browser.desktop\n",
    )
    .unwrap();
    home
}

/// The tray app binary.
pub fn app_bin() -> PathBuf {
    workspace_bin("belfry-desktop", "BELFRY_DESKTOP_BIN")
}

/// One notification as dunst printed it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Popup {
    pub appname: String,
    /// The title as the app sent it.
    pub summary: String,
    /// The body as the app sent it.
    pub body: String,
    pub urgency: String,
    pub actions: String,
    /// What dunst renders (its format filled in, as markup), one line per line.
    pub formatted: String,
}

fn parse_popups(text: &str) -> Vec<Popup> {
    let mut out = Vec::new();
    let mut current: Option<Popup> = None;
    // Blocks like `actions: {` and `urls: {` hold lines of their own until `}`; only the
    // actions are kept.
    let mut block: Option<&str> = None;
    // A field's value that runs over several lines (`formatted`): lines that do not
    // start with a tab continue it.
    let mut continuing = false;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(name) = block {
            if line == "}" {
                block = None;
            } else if let (Some(p), "actions") = (current.as_mut(), name) {
                p.actions.push_str(line);
                p.actions.push('\n');
            }
            continue;
        }
        if line == "{" && current.is_some() {
            // A block whose key stood alone on the line before (`urls:`).
            block = Some("other");
        } else if line == "{" {
            current = Some(Popup::default());
            continuing = false;
        } else if line == "}" {
            out.extend(current.take());
            continuing = false;
        } else if continuing && !raw.starts_with('\t') {
            if let Some(p) = current.as_mut() {
                p.formatted.push('\n');
                p.formatted.push_str(raw.trim_end_matches('\''));
            }
        } else if let Some(p) = current.as_mut()
            && let Some((key, value)) = line.split_once(": ").or_else(|| line.split_once(':'))
        {
            continuing = false;
            let value = value.trim();
            match key {
                "appname" => p.appname = value.trim_matches('\'').to_owned(),
                "summary" => p.summary = value.trim_matches('\'').to_owned(),
                "body" => p.body = value.trim_matches('\'').to_owned(),
                "urgency" => p.urgency = value.to_owned(),
                "formatted" => {
                    p.formatted = value.trim_start_matches('\'').to_owned();
                    if value.len() > 1 && value.ends_with('\'') {
                        p.formatted.pop();
                    } else {
                        continuing = true;
                    }
                }
                _ if value == "{" => {
                    block = Some(if key == "actions" { "actions" } else { "other" })
                }
                "actions" => p.actions = value.to_owned(),
                _ => {}
            }
        }
    }
    out
}

/// Xvfb + D-Bus session + dunst, and a home of its own.
#[derive(Debug)]
pub struct Desktop {
    pub display: String,
    pub dbus: String,
    home: tempfile::TempDir,
    // Held for kill-on-drop.
    _xvfb: Child,
    _bus: Child,
    _dunst: Child,
    printed: Arc<Mutex<String>>,
    /// When each notification reached dunst, with its summary.
    arrived: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The app's tray item, once found (bus name, object path).
    tray: Mutex<Option<(String, String)>>,
}

impl Desktop {
    pub async fn start() -> Desktop {
        Self::start_with_daemon(true).await
    }

    /// A desktop with or without a notification daemon.
    pub async fn start_with_daemon(daemon: bool) -> Desktop {
        // A display number nobody uses. Tests of one binary run in parallel in one
        // process, so each takes the next number from a counter; other processes start
        // elsewhere (by pid), and lock files and a live Xvfb confirm the choice.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = 100 + (std::process::id() % 40) * 20;
        let mut xvfb = None;
        let mut display = String::new();
        for _ in 0..60 {
            let n = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 800;
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                || Path::new(&format!("/tmp/.X{n}-lock")).exists()
            {
                continue;
            }
            display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([&display, "-nolisten", "tcp", "-screen", "0", "1280x860x24"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("Xvfb (apt install xvfb)");
            let ready = async {
                while !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let started = tokio::time::timeout(Duration::from_secs(10), ready)
                .await
                .is_ok();
            // Ours only if our Xvfb is still running (a loser of a race exits at once).
            if started && child.try_wait().unwrap().is_none() {
                xvfb = Some(child);
                break;
            }
            let _ = child.kill().await;
        }
        let xvfb = xvfb.expect("no free X display");
        let home = make_home();
        let mut bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dbus-daemon (apt install dbus)");
        let mut lines = BufReader::new(bus.stdout.take().unwrap()).lines();
        let dbus = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Without a daemon, "dunst" is a process that prints nothing and owns no name.
        let dunstrc = home.path().join(".config/dunst/dunstrc");
        let dunstrc = dunstrc.to_str().unwrap();
        let (program, args): (&str, Vec<&str>) = if daemon {
            ("dunst", vec!["-print", "-config", dunstrc])
        } else {
            ("sleep", vec!["600"])
        };
        let mut dunst = Command::new(program)
            .args(args)
            .envs(xdg_env(home.path()))
            .env("DISPLAY", &display)
            .env("DBUS_SESSION_BUS_ADDRESS", &dbus)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dunst (apt install dunst)");
        let printed = Arc::new(Mutex::new(String::new()));
        let arrived = Arc::new(Mutex::new(Vec::new()));
        let (sink, times) = (printed.clone(), arrived.clone());
        let mut out = BufReader::new(dunst.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if let Some(summary) = line.trim().strip_prefix("summary: ") {
                    let summary = summary.trim_matches('\'').to_owned();
                    times.lock().unwrap().push((Instant::now(), summary));
                }
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let desktop = Desktop {
            display,
            dbus,
            home,
            _xvfb: xvfb,
            _bus: bus,
            _dunst: dunst,
            printed,
            arrived,
            tray: Mutex::new(None),
        };
        // dunst owns the notification service once it answers.
        let deadline = tokio::time::Instant::now() + WAIT;
        while daemon && !desktop.dbus_has("org.freedesktop.Notifications").await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "dunst never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        desktop
    }

    /// When each notification reached dunst so far, with its summary, in arrival order.
    pub fn arrivals(&self) -> Vec<(Instant, String)> {
        self.arrived.lock().unwrap().clone()
    }

    /// How many notifications reached dunst so far.
    pub fn arrived(&self) -> usize {
        self.arrived.lock().unwrap().len()
    }

    /// A command for a program on this desktop (its display, session bus and home,
    /// never Wayland), killed when dropped.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .envs(xdg_env(self.home.path()))
            .env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.dbus)
            .env_remove("WAYLAND_DISPLAY")
            // Links go to the stand-in browser through the XDG handler, not this.
            .env_remove("BROWSER")
            .kill_on_drop(true);
        command
    }

    /// The desktop's home (`HOME`; its XDG directories are the usual ones below it).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Every link the stand-in browser was asked to open, in order.
    pub fn opened(&self) -> Vec<String> {
        std::fs::read_to_string(self.home.path().join("opened.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every notification dunst received so far.
    pub fn popups(&self) -> Vec<Popup> {
        parse_popups(&self.printed.lock().unwrap())
    }

    /// Waits until a popup matching `f` was received.
    pub async fn wait_popup(&self, f: impl Fn(&Popup) -> bool) -> Popup {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = self.popups().into_iter().find(&f) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such popup; dunst got: {:#?}\nas printed:\n{}",
                self.popups(),
                self.printed.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn gdbus(&self, args: &[&str]) -> String {
        // A peer that never answers (some connections on the bus do not handle
        // introspection) must not stall the test: give each call a few seconds.
        let out = Command::new("gdbus")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.dbus)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(3), out).await {
            Ok(out) => {
                String::from_utf8_lossy(&out.expect("gdbus (libglib2.0-bin)").stdout).into_owned()
            }
            Err(_) => String::new(),
        }
    }

    /// Calls `method` on the object at `path` of the bus name `dest`, with `args` as
    /// gdbus reads them; returns the reply as gdbus prints it.
    async fn call(&self, dest: &str, path: &str, method: &str, args: &[&str]) -> String {
        let mut all = vec![
            "call",
            "--session",
            "--dest",
            dest,
            "--object-path",
            path,
            "--method",
            method,
        ];
        all.extend_from_slice(args);
        self.gdbus(&all).await
    }

    /// The names on the session bus, as gdbus prints them.
    async fn bus_names(&self) -> String {
        self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
            &[],
        )
        .await
    }

    pub async fn dbus_has(&self, name: &str) -> bool {
        self.bus_names().await.contains(name)
    }

    /// The tray item the app exports on the session bus: its bus name and object path.
    /// (Under its unique name: with no tray host running there is no watcher to register
    /// a well-known one with.)
    async fn tray_item(&self) -> Option<(String, String)> {
        if let Some(found) = self.tray.lock().unwrap().clone() {
            return Some(found);
        }
        let names = self.bus_names().await;
        for name in names.split('\'').filter(|n| n.starts_with(":1.")) {
            let tree = self
                .gdbus(&[
                    "introspect",
                    "--session",
                    "--dest",
                    name,
                    "--object-path",
                    "/org/ayatana/NotificationItem",
                ])
                .await;
            if let Some(child) = tree
                .lines()
                .filter_map(|l| l.trim().strip_prefix("node "))
                .map(|n| n.trim_end_matches(" {").trim().to_owned())
                .find(|n| !n.starts_with('/') && !n.is_empty())
            {
                let found = (
                    name.to_owned(),
                    format!("/org/ayatana/NotificationItem/{child}"),
                );
                *self.tray.lock().unwrap() = Some(found.clone());
                return Some(found);
            }
        }
        None
    }

    /// The tray item's label (the unread count next to the icon).
    pub async fn tray_label(&self) -> Option<String> {
        let (name, path) = self.tray_item().await?;
        let label = self
            .call(
                &name,
                &path,
                "org.freedesktop.DBus.Properties.Get",
                &["org.kde.StatusNotifierItem", "XAyatanaLabel"],
            )
            .await;
        // (<'3'>,)
        Some(label.split('\'').nth(1).unwrap_or_default().to_owned())
    }

    /// The tray menu's layout as the desktop's tray would read it (dbusmenu).
    pub async fn tray_menu(&self) -> String {
        let Some((name, path)) = self.tray_item().await else {
            return String::new();
        };
        self.call(
            &name,
            &format!("{path}/Menu"),
            "com.canonical.dbusmenu.GetLayout",
            &["0", "--", "-1", "@as []"],
        )
        .await
    }

    /// The menu's first line (the connection status).
    pub async fn tray_status_line(&self) -> String {
        let menu = self.tray_menu().await;
        menu.split("'label': <'")
            .nth(1)
            .and_then(|rest| rest.split("'>").next())
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks the tray menu item with this label, as a tray host would.
    pub async fn tray_click(&self, label: &str) {
        let (name, path) = self.tray_item().await.expect("a tray item");
        let menu = self.tray_menu().await;
        // Items look like `(5, {'label': <'Mark all read'>}, @av [])`.
        let at = menu
            .find(&format!("'label': <'{label}'>"))
            .unwrap_or_else(|| panic!("no {label:?} in {menu}"));
        let id = menu[..at]
            .rsplit('(')
            .next()
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .expect("an item id");
        let out = self
            .call(
                &name,
                &format!("{path}/Menu"),
                "com.canonical.dbusmenu.Event",
                &[&id.to_string(), "clicked", "<0>", "0"],
            )
            .await;
        assert_eq!(out.trim(), "()", "clicking {label:?}");
    }
}

/// The real tray app binary, headless on `desktop`.
#[derive(Debug)]
pub struct App {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl App {
    pub async fn start(desktop: &Desktop, data_dir: &Path, hub_url: &str, user: &str) -> App {
        Self::start_with(desktop, data_dir, hub_url, user, &[]).await
    }

    /// Starts the app with extra environment variables.
    pub async fn start_with(
        desktop: &Desktop,
        data_dir: &Path,
        hub_url: &str,
        user: &str,
        env: &[(&str, &str)],
    ) -> App {
        Self::launch(desktop, &app_bin(), data_dir, hub_url, user, true, env)
    }

    /// Starts `bin` (the app, in whichever build) on `desktop`, in the tray only when
    /// `hidden`, with extra environment variables.
    pub fn launch(
        desktop: &Desktop,
        bin: &Path,
        data_dir: &Path,
        hub_url: &str,
        user: &str,
        hidden: bool,
        env: &[(&str, &str)],
    ) -> App {
        let hidden = hidden.then_some("--hidden");
        let mut child = desktop
            .command(bin)
            .args(hidden)
            .args(["--server", hub_url, "--token", &token(user)])
            .envs(env.iter().copied())
            .env("BELFRY_DESKTOP_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Keep the app's log (warnings and errors) for the tests, and show it as well.
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                eprintln!("{line}");
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        App { child, log }
    }

    /// What the app logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// The app's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}
