//! Belfry's client core: everything the desktop app does that is not a window or a tray.
//!
//! - [`connection`]: the Socket.IO connection to the hub: catch-up from the persisted
//!   cursor, live delivery, acks, heartbeat, reconnect with backoff and jitter.
//! - [`store`]: the local SQLite store: settings, cursor, history, pending read marks.
//! - [`policy`]: which notifications pop up, do-not-disturb, quiet hours, digests.
//! - [`notifier`]: native notifications (notify-rust) and their clicks.
//! - [`device`]: all of the above behind one handle; reports to the shell through a
//!   channel of [`ClientEvent`]s.
//!
//! Nothing here depends on Tauri, so all of it is tested without a window.
#![warn(missing_docs)]

pub mod backoff;
pub mod connection;
pub mod device;
pub mod events;
pub mod notifier;
pub mod policy;
pub mod settings;
pub mod store;

pub use connection::ConnectionConfig;
pub use device::{Device, DeviceError, Overrides};
pub use events::{ClientEvent, ConnectionState, ConnectionStatus, UserAction};
pub use settings::{Dnd, QuietHours, Settings};
pub use store::{HistoryQuery, LocalStore};
