//! The app's commands, declared to Tauri so that each gets a permission of its own
//! (`allow-<command>`): the window's capability (`capabilities/default.json`) grants
//! exactly these and listening to the app's events, nothing of Tauri's core.

/// Every command of `src/commands.rs`, as `tauri::generate_handler!` registers them.
const COMMANDS: &[&str] = &[
    "status",
    "history",
    "unread_count",
    "history_topics",
    "mark_read",
    "mark_all_read",
    "open_url",
    "get_settings",
    "save_settings",
    "set_dnd",
    "reconnect_now",
    "subscriptions",
    "subscribe",
    "unsubscribe",
    "notifier_problem",
    "start_at_login",
];

fn main() {
    let attributes = tauri_build::Attributes::new()
        .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS));
    if let Err(e) = tauri_build::try_build(attributes) {
        panic!("tauri-build: {e:#}");
    }
}
