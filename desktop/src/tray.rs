//! The tray icon and its menu. The icon's colour is the connection state and a red dot
//! marks unread notifications; the title next to it is the unread count. Linux trays have
//! no tooltips or click events, so the menu carries every action.

use crate::{Belfry, window};
use belfry_client::{ConnectionState, Dnd};
use std::sync::Mutex;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, Wry};
use time::OffsetDateTime;

/// The tray icon's id.
pub const TRAY: &str = "main";

/// The menu items that change, and what they show now.
struct TrayItems {
    status: MenuItem<Wry>,
    mark_all: MenuItem<Wry>,
    dnd: [(DndChoice, CheckMenuItem<Wry>); 4],
    /// What the tray shows, so a refresh touches only what changed. A std mutex: held
    /// while the changes are applied, never across an await.
    shown: Mutex<Option<TrayView>>,
}

/// Everything the tray shows, worked out from the device's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrayView {
    status_line: String,
    mark_all: bool,
    dnd: DndChoice,
    /// Which icon: the connection state and whether anything is unread.
    icon: (ConnectionState, bool),
    title: Option<String>,
    tooltip: String,
}

impl TrayView {
    fn of(state: ConnectionState, unread: u64, dnd: DndChoice) -> TrayView {
        let mut line = status_line(state).to_owned();
        if unread > 0 {
            line.push_str(&format!(" · {unread} unread"));
        }
        if dnd != DndChoice::Off {
            line.push_str(" · do not disturb");
        }
        TrayView {
            status_line: line,
            mark_all: unread > 0,
            dnd,
            icon: (state, unread > 0),
            title: (unread > 0).then(|| unread.to_string()),
            tooltip: format!("Belfry: {}", status_line(state)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DndChoice {
    Off,
    Hour,
    Tomorrow,
    Always,
}

impl DndChoice {
    const ALL: [(DndChoice, &'static str, &'static str); 4] = [
        (DndChoice::Off, "dnd-off", "Off"),
        (DndChoice::Hour, "dnd-hour", "For 1 hour"),
        (DndChoice::Tomorrow, "dnd-tomorrow", "Until tomorrow"),
        (DndChoice::Always, "dnd-always", "Until I turn it off"),
    ];

    fn of(dnd: &Dnd, now: OffsetDateTime) -> DndChoice {
        match dnd {
            Dnd::Off => DndChoice::Off,
            Dnd::Always => DndChoice::Always,
            Dnd::Until { until } if *until <= now => DndChoice::Off,
            Dnd::Until { until } if *until - now <= time::Duration::HOUR => DndChoice::Hour,
            Dnd::Until { .. } => DndChoice::Tomorrow,
        }
    }
}

/// The do-not-disturb setting for a menu choice, made at local time `now`.
pub fn dnd_for(choice: &str, now_local: OffsetDateTime) -> Option<Dnd> {
    Some(match choice {
        "off" => Dnd::Off,
        "hour" => Dnd::Until {
            until: now_local + time::Duration::HOUR,
        },
        // Until tomorrow morning, 08:00 local time.
        "tomorrow" => {
            let tomorrow = now_local.date().next_day()?;
            let eight = tomorrow
                .with_hms(8, 0, 0)
                .ok()?
                .assume_offset(now_local.offset());
            Dnd::Until { until: eight }
        }
        "always" => Dnd::Always,
        _ => return None,
    })
}

fn icon(state: ConnectionState, unread: bool) -> Option<Image<'static>> {
    let bytes: &'static [u8] = match (state, unread) {
        (ConnectionState::Connected, false) => include_bytes!("../icons/tray-connected.png"),
        (ConnectionState::Connected, true) => include_bytes!("../icons/tray-connected-unread.png"),
        (ConnectionState::Connecting | ConnectionState::Syncing, false) => {
            include_bytes!("../icons/tray-syncing.png")
        }
        (ConnectionState::Connecting | ConnectionState::Syncing, true) => {
            include_bytes!("../icons/tray-syncing-unread.png")
        }
        (ConnectionState::Reconnecting, false) => include_bytes!("../icons/tray-reconnecting.png"),
        (ConnectionState::Reconnecting, true) => {
            include_bytes!("../icons/tray-reconnecting-unread.png")
        }
        (ConnectionState::AuthFailed | ConnectionState::NotConfigured, false) => {
            include_bytes!("../icons/tray-offline.png")
        }
        (ConnectionState::AuthFailed | ConnectionState::NotConfigured, true) => {
            include_bytes!("../icons/tray-offline-unread.png")
        }
    };
    Image::from_bytes(bytes).ok()
}

fn status_line(state: ConnectionState) -> &'static str {
    match state {
        ConnectionState::NotConfigured => "Not set up: open Settings",
        ConnectionState::Connecting => "Connecting…",
        ConnectionState::Syncing => "Catching up…",
        ConnectionState::Connected => "Connected",
        ConnectionState::Reconnecting => "Offline: reconnecting…",
        ConnectionState::AuthFailed => "Token rejected: open Settings",
    }
}

/// Builds the tray icon and its menu.
pub fn create(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, "status", "Starting…", false, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open Belfry", true, None::<&str>)?;
    let mark_all = MenuItem::with_id(app, "mark-all-read", "Mark all read", true, None::<&str>)?;
    let reconnect = MenuItem::with_id(app, "reconnect", "Reconnect now", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit Belfry", true, None::<&str>)?;
    let dnd_items = DndChoice::ALL.map(|(choice, id, label)| {
        CheckMenuItem::with_id(app, id, label, true, choice == DndChoice::Off, None::<&str>)
            .map(|item| (choice, item))
    });
    let [a, b, c, d] = dnd_items;
    let dnd = [a?, b?, c?, d?];
    let dnd_menu = Submenu::with_items(
        app,
        "Do not disturb",
        true,
        &[&dnd[0].1, &dnd[1].1, &dnd[2].1, &dnd[3].1],
    )?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &open,
            &mark_all,
            &dnd_menu,
            &reconnect,
            &PredefinedMenuItem::separator(app)?,
            &quit,
        ],
    )?;
    let mut builder = TrayIconBuilder::with_id(TRAY)
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(on_menu);
    if let Some(image) = icon(ConnectionState::Connecting, false) {
        builder = builder.icon(image);
    }
    builder.build(app)?;
    app.manage(TrayItems {
        status,
        mark_all,
        dnd,
        shown: Mutex::new(None),
    });
    Ok(())
}

fn on_menu(app: &AppHandle, event: MenuEvent) {
    let id = event.id().as_ref().to_owned();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let Some(belfry) = app.try_state::<Belfry>() else {
            return;
        };
        let device = &belfry.device;
        match id.as_str() {
            "open" => window::show(&app),
            "mark-all-read" => {
                if let Err(e) = device.mark_all_read().await {
                    tracing::warn!(error = %e, "mark all read");
                }
            }
            "reconnect" => device.reconnect_now().await,
            "quit" => app.exit(0),
            other => {
                if let Some(choice) = other.strip_prefix("dnd-")
                    && let Some(dnd) = dnd_for(choice, belfry_client::policy::now_local())
                    && let Err(e) = device.set_dnd(dnd).await
                {
                    tracing::warn!(error = %e, "do not disturb");
                }
            }
        }
        refresh(&app).await;
        let _ = tauri::Emitter::emit(&app, crate::EVENT_CHANGED, ());
    });
}

/// Brings the icon, title and menu up to date with the device, touching only what
/// changed: every change is a D-Bus round of the tray protocol, and a new icon is a PNG
/// encoded and written out, so a burst of notifications must not redo them each time.
pub async fn refresh(app: &AppHandle) {
    let Some(belfry) = app.try_state::<Belfry>() else {
        return;
    };
    let status = belfry.device.status();
    let unread = belfry.device.unread_count().await.unwrap_or(0);
    let dnd = DndChoice::of(
        &belfry.device.settings().dnd,
        belfry_client::policy::now_local(),
    );
    let Some(items) = app.try_state::<TrayItems>() else {
        return;
    };
    let view = TrayView::of(status.state, unread, dnd);
    let mut shown = items.shown.lock().unwrap_or_else(|p| p.into_inner());
    let old = shown.as_ref();
    if old.map(|o| &o.status_line) != Some(&view.status_line) {
        let _ = items.status.set_text(&view.status_line);
    }
    if old.map(|o| o.mark_all) != Some(view.mark_all) {
        let _ = items.mark_all.set_enabled(view.mark_all);
    }
    if old.map(|o| o.dnd) != Some(view.dnd) {
        for (choice, item) in &items.dnd {
            let _ = item.set_checked(*choice == view.dnd);
        }
    }
    if let Some(tray) = app.tray_by_id(TRAY) {
        if old.map(|o| o.icon) != Some(view.icon) {
            let _ = tray.set_icon(icon(view.icon.0, view.icon.1));
        }
        if old.map(|o| &o.title) != Some(&view.title) {
            let _ = tray.set_title(view.title.clone());
        }
        if old.map(|o| &o.tooltip) != Some(&view.tooltip) {
            let _ = tray.set_tooltip(Some(view.tooltip.clone()));
        }
    }
    *shown = Some(view);
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn dnd_choices() {
        let now = datetime!(2026-11-22 21:30 +01:00);
        assert_eq!(dnd_for("off", now), Some(Dnd::Off));
        assert_eq!(dnd_for("always", now), Some(Dnd::Always));
        assert_eq!(
            dnd_for("hour", now),
            Some(Dnd::Until {
                until: datetime!(2026-11-22 22:30 +01:00)
            })
        );
        assert_eq!(
            dnd_for("tomorrow", now),
            Some(Dnd::Until {
                until: datetime!(2026-11-23 08:00 +01:00)
            })
        );
        assert_eq!(dnd_for("loud", now), None);
        let hour = dnd_for("hour", now).expect("hour");
        assert_eq!(DndChoice::of(&hour, now), DndChoice::Hour);
        let tomorrow = dnd_for("tomorrow", now).expect("tomorrow");
        assert_eq!(DndChoice::of(&tomorrow, now), DndChoice::Tomorrow);
        assert_eq!(
            DndChoice::of(&hour, now + time::Duration::hours(2)),
            DndChoice::Off
        );
    }

    /// One more unread notification changes the count in the menu and the title, but not
    /// the icon: a burst of them must not re-encode and re-send the icon each time.
    #[test]
    fn the_view_keeps_the_icon_while_only_the_count_changes() {
        let three = TrayView::of(ConnectionState::Connected, 3, DndChoice::Off);
        let four = TrayView::of(ConnectionState::Connected, 4, DndChoice::Off);
        assert_eq!(three.status_line, "Connected · 3 unread");
        assert_eq!(four.status_line, "Connected · 4 unread");
        assert_eq!(four.title.as_deref(), Some("4"));
        assert_eq!(three.icon, four.icon);
        assert_eq!(three.tooltip, four.tooltip);

        let none = TrayView::of(ConnectionState::Connected, 0, DndChoice::Always);
        assert_eq!(none.status_line, "Connected · do not disturb");
        assert_eq!(none.title, None);
        assert!(!none.mark_all);
        assert_ne!(none.icon, four.icon);
        let offline = TrayView::of(ConnectionState::Reconnecting, 0, DndChoice::Always);
        assert_ne!(offline.icon, none.icon);
        assert_eq!(offline.tooltip, "Belfry: Offline: reconnecting…");
    }
}
