//! The floor for the tray app's memory and CPU: Tauri 2 with nothing but a tray icon and
//! a Quit item, no window, built with the same Tauri features and profile as
//! `belfry-desktop` (`belfry-bench desktop` runs both side by side).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use tauri::RunEvent;
use tauri::menu::{Menu, MenuItem};
use tauri::tray::TrayIconBuilder;

fn main() {
    let app = tauri::Builder::default()
        .setup(|app| {
            let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu = Menu::with_items(app, &[&quit])?;
            let mut tray =
                TrayIconBuilder::with_id("main")
                    .menu(&menu)
                    .on_menu_event(|app, event| {
                        if event.id() == "quit" {
                            app.exit(0);
                        }
                    });
            if let Some(icon) = app.default_window_icon() {
                tray = tray.icon(icon.clone());
            }
            tray.build(app)?;
            Ok(())
        })
        .build(tauri::generate_context!())
        .expect("the empty tray app");
    // No window to close: stay in the tray until Quit.
    app.run(|_, event| {
        if let RunEvent::ExitRequested {
            api, code: None, ..
        } = event
        {
            api.prevent_exit();
        }
    });
}
