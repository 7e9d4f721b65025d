//! Native notifications through the desktop's notification daemon (notify-rust, D-Bus on
//! Linux), app name "Belfry". Showing never blocks the async runtime; waiting for a click
//! runs on a blocking thread. A missing daemon is reported, never a crash.
//!
//! What publishers write is text, whatever the daemon does with it: the body is escaped
//! for a daemon that renders markup in bodies (it says so: `body-markup`), and while the
//! daemon cannot be asked. Titles are
//! plain text to every daemon (the specification says so, and dunst and GNOME escape
//! them themselves), so they go as they are. A click or a button opens only http and
//! https links.

use crate::events::{ClientEvent, UserAction};
use crate::policy::{Popup, Urgency, digest_title};
use belfry_protocol::Notification;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OnceCell, Semaphore, mpsc};

/// The app name every notification carries.
pub const APP_NAME: &str = "Belfry";
/// How many shown notifications are watched for clicks at once (each needs a thread).
const WATCHED: usize = 16;

/// Whether the daemon renders markup in notification bodies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Markup {
    /// Bodies are markup (the daemon has the `body-markup` capability).
    pub body: bool,
}

impl Markup {
    /// What a daemon with these capabilities renders.
    pub fn of(capabilities: &[String]) -> Markup {
        Markup {
            body: capabilities.iter().any(|c| c == "body-markup"),
        }
    }

    /// The daemon's (on a blocking thread: notify-rust's calls block); an error when it
    /// cannot be asked (no daemon yet).
    async fn of_daemon() -> Result<Markup, ()> {
        tokio::task::spawn_blocking(|| notify_rust::get_capabilities().map(|c| Markup::of(&c)))
            .await
            .map_err(drop)?
            .map_err(drop)
    }
}

/// Text as a markup renderer shows it literally.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A link the desktop may open: http and https only (never `file:`, `javascript:`, or
/// a scheme some other program handles).
pub fn openable(url: &str) -> Option<UserAction> {
    belfry_protocol::validate_url(url)
        .is_ok()
        .then(|| UserAction::OpenUrl {
            url: url.to_owned(),
        })
}

/// What a click on a notification's body and on each of its buttons does: its link (or
/// the window, without one that may be opened), and one button per action whose link may
/// be opened, with its label.
pub fn clicks(n: &Notification) -> Vec<(String, String, UserAction)> {
    let default = n
        .url
        .as_deref()
        .and_then(openable)
        .unwrap_or(UserAction::OpenWindow);
    let mut out = vec![("default".to_owned(), "Open".to_owned(), default)];
    for (i, action) in n.actions.iter().enumerate() {
        if let Some(open) = openable(&action.url) {
            out.push((format!("action-{i}"), action.label.clone(), open));
        }
    }
    out
}

/// Shows popups and reports clicks.
#[derive(Debug, Clone)]
pub struct Notifier {
    events: mpsc::Sender<ClientEvent>,
    watchers: Arc<Semaphore>,
    failing: Arc<AtomicBool>,
    markup: Arc<OnceCell<Markup>>,
}

fn urgency(u: Urgency) -> notify_rust::Urgency {
    match u {
        Urgency::Low => notify_rust::Urgency::Low,
        Urgency::Normal => notify_rust::Urgency::Normal,
        Urgency::Critical => notify_rust::Urgency::Critical,
    }
}

impl Notifier {
    /// A notifier that reports clicks and failures on `events`.
    pub fn new(events: mpsc::Sender<ClientEvent>) -> Self {
        Self {
            events,
            watchers: Arc::new(Semaphore::new(WATCHED)),
            failing: Arc::new(AtomicBool::new(false)),
            markup: Arc::new(OnceCell::new()),
        }
    }

    /// Shows one popup. Failures are reported once (until a popup works again).
    pub async fn show(&self, popup: &Popup) {
        // Asked until the daemon answers (it may start after the app does). Unknown, the
        // body is escaped: literal entities are better than markup a publisher wrote.
        let markup = match self.markup.get_or_try_init(Markup::of_daemon).await {
            Ok(markup) => *markup,
            Err(()) => Markup { body: true },
        };
        let body = |t: &str| {
            if markup.body {
                escape_markup(t)
            } else {
                t.to_owned()
            }
        };
        let mut note = notify_rust::Notification::new();
        note.appname(APP_NAME);
        // What the default action (a click on the body) and each button do.
        let mut targets: Vec<(String, UserAction)> = Vec::new();
        match popup {
            Popup::One(n) => {
                let u = Urgency::of(n.priority);
                note.summary(&n.title)
                    .body(&body(&n.body))
                    .urgency(urgency(u));
                if u == Urgency::Critical {
                    note.timeout(notify_rust::Timeout::Never);
                }
                for (key, label, action) in clicks(n) {
                    note.action(&key, &label);
                    targets.push((key, action));
                }
            }
            Popup::Digest { count, urgency: u } => {
                note.summary(&digest_title(*count))
                    .body("Open Belfry to read them.")
                    .urgency(urgency(*u));
                note.action("default", "Open Belfry");
                targets.push(("default".into(), UserAction::OpenWindow));
            }
        }
        match note.show_async().await {
            Ok(handle) => {
                self.failing.store(false, Ordering::Relaxed);
                self.watch(handle, targets);
            }
            Err(e) => {
                let reason = format!(
                    "Cannot show desktop notifications: {e}. Is a notification daemon running?"
                );
                tracing::warn!(%reason);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let _ = self
                        .events
                        .send(ClientEvent::NotifierUnavailable { reason })
                        .await;
                }
            }
        }
    }

    /// Waits for a click on a blocking thread, while a watcher slot is free.
    fn watch(&self, handle: notify_rust::NotificationHandle, targets: Vec<(String, UserAction)>) {
        let Ok(permit) = self.watchers.clone().try_acquire_owned() else {
            return;
        };
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            handle.wait_for_action(|key| {
                if let Some((_, action)) = targets.iter().find(|(k, _)| k == key) {
                    let _ = events.blocking_send(ClientEvent::Action(action.clone()));
                }
            });
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use belfry_protocol::{Action, Priority};

    fn note(url: Option<&str>, actions: &[(&str, &str)]) -> Notification {
        Notification {
            id: 1,
            event: "notification".into(),
            title: "t".into(),
            body: String::new(),
            priority: Priority::Default,
            tags: vec![],
            url: url.map(str::to_owned),
            actions: actions
                .iter()
                .map(|(label, url)| Action {
                    label: (*label).to_owned(),
                    url: (*url).to_owned(),
                })
                .collect(),
            data: serde_json::Value::Null,
            topic: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
            read: false,
        }
    }

    #[test]
    fn only_web_links_are_ever_opened() {
        let safe = clicks(&note(
            Some("https://example.com/pr/7"),
            &[
                ("Logs", "http://ci.example/1"),
                ("Run", "file:///usr/bin/xterm"),
            ],
        ));
        assert_eq!(
            safe.iter()
                .map(|(k, _, a)| (k.as_str(), a.clone()))
                .collect::<Vec<_>>(),
            vec![
                (
                    "default",
                    UserAction::OpenUrl {
                        url: "https://example.com/pr/7".into()
                    }
                ),
                (
                    "action-0",
                    UserAction::OpenUrl {
                        url: "http://ci.example/1".into()
                    }
                ),
            ]
        );
        for bad in [
            "file:///etc/passwd",
            "javascript:alert(1)",
            "smb://host/share",
            "steam://run/1",
        ] {
            let c = clicks(&note(Some(bad), &[("x", bad)]));
            assert_eq!(c.len(), 1, "{bad}");
            assert_eq!(c[0].2, UserAction::OpenWindow, "{bad}");
        }
    }

    #[test]
    fn markup_is_escaped_where_the_daemon_renders_it() {
        assert_eq!(
            escape_markup("<a href=\"x\">it's</a> & more"),
            "&lt;a href=&quot;x&quot;&gt;it&#39;s&lt;/a&gt; &amp; more"
        );
        let caps = vec!["body-markup".to_owned(), "actions".to_owned()];
        assert_eq!(Markup::of(&caps), Markup { body: true });
        assert_eq!(Markup::of(&[]), Markup::default());
    }
}
