//! The floor app must really be a tray app, or the desktop benchmark compares against
//! nothing: started on a headless desktop, it exports its tray item on the session bus
//! and stays up, idle.
#![allow(clippy::unwrap_used)]

use belfry_testkit::desktop::Desktop;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn the_empty_tray_app_shows_a_tray_item_and_stays_up() {
    let desktop = Desktop::start().await;
    let mut app = desktop
        .command(env!("CARGO_BIN_EXE_belfry-empty-tray"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the empty tray app");
    let mut menu = String::new();
    for _ in 0..100 {
        menu = desktop.tray_menu().await;
        if menu.contains("'label': <'Quit'>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(menu.contains("'label': <'Quit'>"), "tray menu: {menu:?}");
    assert!(app.try_wait().unwrap().is_none(), "the app exited");
    app.kill().await.unwrap();
}
