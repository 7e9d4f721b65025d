//! The main window: created when opened, destroyed when closed (the webview and its
//! helper processes are the heavy part of the app; the tray alone stays light).

use tauri::{AppHandle, Manager, WebviewUrl, WebviewWindowBuilder};

/// The main window's label.
pub const MAIN: &str = "main";

/// Opens the window, or brings it to the front if it is open.
pub fn show(app: &AppHandle) {
    if let Some(window) = app.get_webview_window(MAIN) {
        let _ = window.unminimize();
        let _ = window.show();
        let _ = window.set_focus();
        return;
    }
    let built = WebviewWindowBuilder::new(app, MAIN, WebviewUrl::App("index.html".into()))
        .title("Belfry")
        .inner_size(900.0, 660.0)
        .min_inner_size(520.0, 420.0)
        .build();
    if let Err(e) = built {
        tracing::error!(error = %e, "cannot open the window");
    }
}
