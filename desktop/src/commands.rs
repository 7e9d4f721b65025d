//! The commands the window's page calls (`window.__TAURI__.core.invoke`). Each returns
//! `Result<T, String>`: the string is shown to the person as it is.

use crate::{Belfry, tray};
use belfry_client::{ConnectionStatus, HistoryQuery, Settings};
use belfry_protocol::Notification;
use belfry_protocol::events::ReadRequest;
use tauri::{AppHandle, State};
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_opener::OpenerExt as _;

type Reply<T> = Result<T, String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The connection status.
#[tauri::command]
pub fn status(belfry: State<'_, Belfry>) -> ConnectionStatus {
    belfry.device.status()
}

/// The history, newest first, filtered.
#[tauri::command]
pub async fn history(belfry: State<'_, Belfry>, query: HistoryQuery) -> Reply<Vec<Notification>> {
    belfry.device.history(&query).await.map_err(text)
}

/// How many are unread.
#[tauri::command]
pub async fn unread_count(belfry: State<'_, Belfry>) -> Reply<u64> {
    belfry.device.unread_count().await.map_err(text)
}

/// The topics in the history (for the filter).
#[tauri::command]
pub async fn history_topics(belfry: State<'_, Belfry>) -> Reply<Vec<String>> {
    belfry.device.history_topics().await.map_err(text)
}

/// Marks these read (here, on the hub and so on the user's other devices).
#[tauri::command]
pub async fn mark_read(app: AppHandle, belfry: State<'_, Belfry>, ids: Vec<u64>) -> Reply<u64> {
    let n = belfry
        .device
        .mark_read(ReadRequest::Ids { ids })
        .await
        .map_err(text)?;
    tray::refresh(&app).await;
    Ok(n)
}

/// Marks everything read.
#[tauri::command]
pub async fn mark_all_read(app: AppHandle, belfry: State<'_, Belfry>) -> Reply<u64> {
    let n = belfry.device.mark_all_read().await.map_err(text)?;
    tray::refresh(&app).await;
    Ok(n)
}

/// Opens a notification's link in the browser (http and https only).
#[tauri::command]
pub fn open_url(app: AppHandle, url: String) -> Reply<()> {
    open_link(&app, &url)
}

/// Opens a link in the browser, whoever asks (the window, or a click on a native
/// notification): http and https only, never another scheme.
pub fn open_link(app: &AppHandle, url: &str) -> Reply<()> {
    belfry_protocol::validate_url(url)
        .map_err(|e| format!("This link cannot be opened: it {e}"))?;
    app.opener()
        .open_url(url, None::<&str>)
        .map_err(|e| format!("Cannot open the browser: {e}"))
}

/// The settings.
#[tauri::command]
pub fn get_settings(belfry: State<'_, Belfry>) -> Settings {
    belfry.device.settings()
}

/// Saves settings (reconnecting if the server or token changed).
#[tauri::command]
pub async fn save_settings(
    app: AppHandle,
    belfry: State<'_, Belfry>,
    settings: Settings,
) -> Reply<()> {
    let start_at_login = settings.start_at_login;
    belfry
        .device
        .update_settings(settings)
        .await
        .map_err(text)?;
    apply_autostart(&app, start_at_login)?;
    tray::refresh(&app).await;
    Ok(())
}

/// Do not disturb: `off`, `hour`, `tomorrow` or `always`.
#[tauri::command]
pub async fn set_dnd(app: AppHandle, belfry: State<'_, Belfry>, mode: String) -> Reply<()> {
    let dnd = tray::dnd_for(&mode, belfry_client::policy::now_local())
        .ok_or_else(|| format!("Unknown do-not-disturb choice {mode:?}"))?;
    belfry.device.set_dnd(dnd).await.map_err(text)?;
    tray::refresh(&app).await;
    Ok(())
}

/// Drops the connection and connects again at once.
#[tauri::command]
pub async fn reconnect_now(belfry: State<'_, Belfry>) -> Reply<()> {
    belfry.device.reconnect_now().await;
    Ok(())
}

/// The user's topic subscriptions (on the hub, shared by every device).
#[tauri::command]
pub async fn subscriptions(belfry: State<'_, Belfry>) -> Reply<Vec<String>> {
    belfry.device.subscriptions().await.map_err(text)
}

/// Subscribes to a topic.
#[tauri::command]
pub async fn subscribe(belfry: State<'_, Belfry>, topic: String) -> Reply<Vec<String>> {
    belfry.device.subscribe(topic.trim()).await.map_err(text)
}

/// Unsubscribes from a topic.
#[tauri::command]
pub async fn unsubscribe(belfry: State<'_, Belfry>, topic: String) -> Reply<Vec<String>> {
    belfry.device.unsubscribe(topic.trim()).await.map_err(text)
}

/// Why native notifications cannot be shown, if they cannot.
#[tauri::command]
pub fn notifier_problem(belfry: State<'_, Belfry>) -> Option<String> {
    belfry
        .notifier_problem
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Whether the app starts at login (as the system sees it).
#[tauri::command]
pub fn start_at_login(app: AppHandle) -> Reply<bool> {
    app.autolaunch().is_enabled().map_err(text)
}

fn apply_autostart(app: &AppHandle, enabled: bool) -> Reply<()> {
    let launcher = app.autolaunch();
    let now = launcher.is_enabled().unwrap_or(false);
    match (enabled, now) {
        (true, false) => launcher.enable(),
        (false, true) => launcher.disable(),
        _ => Ok(()),
    }
    .map_err(|e| format!("Cannot change start at login: {e}"))
}
