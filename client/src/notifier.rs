//! Native notifications through the desktop's notification daemon (notify-rust, D-Bus on
//! Linux), app name "Belfry". Showing never blocks the async runtime; waiting for a click
//! runs on a blocking thread. A missing daemon is reported, never a crash.

use crate::events::{ClientEvent, UserAction};
use crate::policy::{Popup, Urgency, digest_title};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Semaphore, mpsc};

/// The app name every notification carries.
pub const APP_NAME: &str = "Belfry";
/// How many shown notifications are watched for clicks at once (each needs a thread).
const WATCHED: usize = 16;

/// Shows popups and reports clicks.
#[derive(Debug, Clone)]
pub struct Notifier {
    events: mpsc::Sender<ClientEvent>,
    watchers: Arc<Semaphore>,
    failing: Arc<AtomicBool>,
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
        }
    }

    /// Shows one popup. Failures are reported once (until a popup works again).
    pub async fn show(&self, popup: &Popup) {
        let mut note = notify_rust::Notification::new();
        note.appname(APP_NAME);
        // What the default action (a click on the body) and each button do.
        let mut targets: Vec<(String, UserAction)> = Vec::new();
        match popup {
            Popup::One(n) => {
                let u = Urgency::of(n.priority);
                note.summary(&n.title).body(&n.body).urgency(urgency(u));
                if u == Urgency::Critical {
                    note.timeout(notify_rust::Timeout::Never);
                }
                let default = match &n.url {
                    Some(url) => UserAction::OpenUrl { url: url.clone() },
                    None => UserAction::OpenWindow,
                };
                note.action("default", "Open");
                targets.push(("default".into(), default));
                for (i, action) in n.actions.iter().enumerate() {
                    let key = format!("action-{i}");
                    note.action(&key, &action.label);
                    targets.push((
                        key,
                        UserAction::OpenUrl {
                            url: action.url.clone(),
                        },
                    ));
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
