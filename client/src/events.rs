//! What the client core tells the shell (tray, window): connection state in plain words,
//! arrivals, read changes, and what the person clicked on a native notification.

use belfry_protocol::Notification;
use serde::Serialize;

/// The state of the connection to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// No server or token yet.
    NotConfigured,
    /// Opening the connection.
    Connecting,
    /// Connected, receiving what was missed.
    Syncing,
    /// Connected and up to date.
    Connected,
    /// The connection failed or dropped; trying again after a delay.
    Reconnecting,
    /// The hub refused the token; waiting for a new one.
    AuthFailed,
}

/// The connection's state and, when something is wrong, why in plain words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionStatus {
    /// The state.
    pub state: ConnectionState,
    /// A sentence for people ("Cannot reach the hub at ...: connection refused").
    pub detail: String,
}

impl ConnectionStatus {
    /// A status with its sentence.
    pub fn new(state: ConnectionState, detail: impl Into<String>) -> Self {
        Self {
            state,
            detail: detail.into(),
        }
    }
}

/// What the person chose on a native notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UserAction {
    /// Open this URL in the browser.
    OpenUrl {
        /// The URL (http or https).
        url: String,
    },
    /// Open the Belfry window.
    OpenWindow,
}

/// Everything the core reports.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// The connection state changed.
    Status(ConnectionStatus),
    /// New notifications were stored.
    Stored {
        /// The new ones, ascending.
        notifications: Vec<Notification>,
        /// They came with a catch-up (popups wait for its end, to fold many into one).
        catch_up: bool,
    },
    /// Read state changed (here or on another device).
    ReadChanged,
    /// The user's topic subscriptions changed on another device.
    TopicsChanged,
    /// A catch-up finished.
    CaughtUp {
        /// How many new notifications it brought.
        received: usize,
    },
    /// Native notifications cannot be shown (no notification daemon, no session bus).
    NotifierUnavailable {
        /// Why, in plain words.
        reason: String,
    },
    /// The person clicked something on a native notification.
    Action(UserAction),
}
