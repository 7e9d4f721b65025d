//! The Belfry tray app: a thin Tauri shell around `belfry-client`.
//!
//! The client core ([`belfry_client::Device`]) does the work: connection, catch-up,
//! local store, popup policy, native notifications. This crate only shows it: the tray
//! icon and menu (`tray.rs`), the window, created when opened and destroyed when closed so
//! the idle app stays light (`window.rs`), and the commands its page calls
//! (`commands.rs`).

mod commands;
mod launch;
mod tray;
mod window;

use belfry_client::{ClientEvent, ConnectionConfig, Device, UserAction};
use std::sync::Mutex;
use tauri::{AppHandle, Emitter, Manager, RunEvent};

/// Event the page hears when the connection state changes (payload: the status).
pub const EVENT_STATUS: &str = "belfry://status";
/// Event the page hears when the history or read state changed.
pub const EVENT_CHANGED: &str = "belfry://changed";
/// Event the page hears when the user's topics changed on another device.
pub const EVENT_TOPICS: &str = "belfry://topics";
/// Event the page hears when native notifications cannot be shown (payload: why).
pub const EVENT_NOTIFIER: &str = "belfry://notifier";

/// What the shell keeps: the device, and the last problem with native notifications.
#[derive(Debug)]
pub struct Belfry {
    /// The client core.
    pub device: Device,
    /// Why native notifications cannot be shown, if they cannot. A std mutex: read and
    /// written in a few instructions, never across an await.
    pub notifier_problem: Mutex<Option<String>>,
}

/// Starts the app.
pub fn run() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // A closed stderr (a supervisor that closed the pipe) loses the log lines; the
        // default would report each lost line on stderr with eprintln!, which panics.
        .log_internal_errors(false)
        .try_init();
    let options = launch::Options::from_args(std::env::args_os());

    let app = tauri::Builder::default()
        // A second launch focuses the first (its --server/--token, if any, are applied).
        .plugin(tauri_plugin_single_instance::init(|app, argv, _cwd| {
            let second = launch::Options::from_args(argv);
            if !second.hidden {
                window::show(app);
            }
        }))
        .plugin(
            tauri_plugin_autostart::Builder::new()
                .args(["--hidden"])
                .build(),
        )
        .plugin(tauri_plugin_opener::init())
        .invoke_handler(tauri::generate_handler![
            commands::status,
            commands::history,
            commands::unread_count,
            commands::history_topics,
            commands::mark_read,
            commands::mark_all_read,
            commands::open_url,
            commands::get_settings,
            commands::save_settings,
            commands::set_dnd,
            commands::reconnect_now,
            commands::subscriptions,
            commands::subscribe,
            commands::unsubscribe,
            commands::notifier_problem,
            commands::start_at_login,
        ])
        .setup(move |app| {
            let dir = match &options.data_dir {
                Some(dir) => dir.clone(),
                None => app.path().app_data_dir()?,
            };
            let (device, events) = tauri::async_runtime::block_on(Device::start(
                &dir,
                options.overrides(),
                ConnectionConfig::default(),
            ))?;
            tracing::info!(data_dir = %dir.display(), "Belfry started");
            app.manage(Belfry {
                device,
                notifier_problem: Mutex::new(None),
            });
            tray::create(app.handle())?;
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(pump(handle, events));
            if !options.hidden {
                window::show(app.handle());
            }
            Ok(())
        })
        .build(tauri::generate_context!());
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "Belfry cannot start");
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr(),
                format_args!("Belfry cannot start: {e}\n"),
            );
            std::process::exit(1);
        }
    };
    app.run(|_app, event| {
        // Closing the window keeps the app in the tray; only Quit (an explicit exit code)
        // ends it.
        if let RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            api.prevent_exit();
        }
    });
}

/// Passes what the core reports to the tray and the page. Whatever is already queued is
/// handled together: a burst of notifications makes one page event and one tray refresh,
/// not one per notification.
async fn pump(app: AppHandle, mut events: tokio::sync::mpsc::Receiver<ClientEvent>) {
    tray::refresh(&app).await;
    while let Some(first) = events.recv().await {
        let mut changed = false;
        let mut status_changed = false;
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                ClientEvent::Status(status) => {
                    let _ = app.emit(EVENT_STATUS, &status);
                    status_changed = true;
                }
                ClientEvent::Stored { .. }
                | ClientEvent::ReadChanged
                | ClientEvent::CaughtUp { .. } => changed = true,
                ClientEvent::TopicsChanged => {
                    let _ = app.emit(EVENT_TOPICS, ());
                }
                ClientEvent::NotifierUnavailable { reason } => {
                    tracing::warn!(%reason, "native notifications unavailable");
                    if let Some(state) = app.try_state::<Belfry>() {
                        *state
                            .notifier_problem
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
                    }
                    let _ = app.emit(EVENT_NOTIFIER, &reason);
                }
                ClientEvent::Action(UserAction::OpenUrl { url }) => {
                    if let Err(e) = commands::open_link(&app, &url) {
                        tracing::warn!(%url, error = %e, "not opening a link");
                    }
                }
                ClientEvent::Action(UserAction::OpenWindow) => window::show(&app),
            }
            next = events.try_recv().ok();
        }
        if changed {
            let _ = app.emit(EVENT_CHANGED, ());
        }
        if changed || status_changed {
            tray::refresh(&app).await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The names between `start` and `end` in `text`: quoted (`"mark_read"`) or after
    /// `commands::`.
    fn names(text: &str, start: &str, end: &str) -> Vec<String> {
        let from = text.find(start).expect("start") + start.len();
        let part = &text[from..];
        let part = &part[..part.find(end).expect("end")];
        part.lines()
            .map(|l| l.trim().trim_end_matches(','))
            .filter_map(|l| {
                l.strip_prefix("commands::")
                    .or_else(|| l.strip_prefix('"').and_then(|l| l.strip_suffix('"')))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The window's capability grants the app's commands, each of them, and listening to
    /// its events: nothing of Tauri's core, no plugin.
    #[test]
    fn the_capability_grants_exactly_the_app_commands_and_events() {
        let registered = names(include_str!("lib.rs"), "generate_handler![", "]");
        let declared = names(
            include_str!("../build.rs"),
            "const COMMANDS: &[&str] = &[",
            "];",
        );
        assert_eq!(
            registered, declared,
            "build.rs and generate_handler! differ"
        );
        let capability: serde_json::Value =
            serde_json::from_str(include_str!("../capabilities/default.json")).expect("JSON");
        let granted: Vec<&str> = capability["permissions"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|p| p.as_str().expect("a name"))
            .collect();
        let mut expected = vec!["core:event:allow-listen", "core:event:allow-unlisten"];
        let commands: Vec<String> = declared
            .iter()
            .map(|c| format!("allow-{}", c.replace('_', "-")))
            .collect();
        expected.extend(commands.iter().map(String::as_str));
        assert_eq!(granted, expected);
    }
}
