//! What a commit changes that the rest of the hub must hear of: the notifications it
//! stored and the subscriptions it added or removed.

use belfry_protocol::{Notification, Target};
use std::sync::Arc;
use std::time::Instant;

/// A committed notification on its way to delivery.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The notification as subscribers receive it.
    pub notification: Notification,
    /// Who it is for.
    pub targets: Vec<Target>,
    /// When the hub received the publish (for the publish-to-emit latency), or when this
    /// node read another node's commit.
    pub received: Instant,
}

/// A change of who belongs in a topic's room, announced by the transaction that stored it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RoomChange {
    /// `user` subscribed to `topic`; every notification after `from` (the head when the
    /// subscription was stored) may be for them.
    Subscribed {
        /// The user.
        user: String,
        /// The topic.
        topic: String,
        /// The committed head when the subscription was stored.
        from: u64,
    },
    /// `user` unsubscribed from `topic`.
    Unsubscribed {
        /// The user.
        user: String,
        /// The topic.
        topic: String,
    },
}

/// What a committed batch tells the rest of the hub, in commit order.
#[derive(Debug, Default)]
pub struct Effects {
    /// Notifications stored, ascending by id.
    pub notifications: Vec<Committed>,
    /// Subscriptions added or removed.
    pub rooms: Vec<RoomChange>,
    /// The store's epoch as the writer knew it through the commit (set by the writer;
    /// `None` when it changed while the commit ran).
    pub epoch: Option<Arc<str>>,
}

impl Effects {
    pub(crate) fn is_empty(&self) -> bool {
        self.notifications.is_empty() && self.rooms.is_empty()
    }

    pub(crate) fn extend(&mut self, other: Effects) {
        self.notifications.extend(other.notifications);
        self.rooms.extend(other.rooms);
    }
}
