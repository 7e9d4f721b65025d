//! Socket.IO event names and payloads.
//!
//! Subscribers connect to namespace [`SUBSCRIBER_NAMESPACE`] with [`HandshakeAuth`];
//! publishers to [`PUBLISHER_NAMESPACE`] with [`PublisherAuth`].

use crate::{ErrorBody, ErrorCode, Notification};
use serde::{Deserialize, Serialize};

/// The subscribers' namespace.
pub const SUBSCRIBER_NAMESPACE: &str = "/";
/// The publishers' namespace.
pub const PUBLISHER_NAMESPACE: &str = "/publisher";

/// Server -> client: one batch of the catch-up ([`SyncBatch`]).
pub const SYNC: &str = "sync";
/// Server -> client: the catch-up is complete ([`Synced`]).
pub const SYNCED: &str = "synced";
/// Server -> client: one live notification ([`Notification`]).
pub const NOTIFICATION: &str = "notification";
/// Server -> client: notifications were marked read on another device ([`ReadEvent`]).
/// Client -> server: mark notifications read ([`ReadRequest`]).
pub const READ: &str = "read";
/// Server -> client: the user's subscriptions changed on another device ([`TopicRequest`]).
pub const SUBSCRIBED: &str = "subscribed";
/// Server -> client: the user unsubscribed on another device ([`TopicRequest`]).
pub const UNSUBSCRIBED: &str = "unsubscribed";
/// Client -> server: everything up to this id is stored on the device ([`AckRequest`]).
pub const ACK: &str = "ack";
/// Client -> server: subscribe to a topic ([`TopicRequest`]).
pub const SUBSCRIBE: &str = "subscribe";
/// Client -> server: unsubscribe from a topic ([`TopicRequest`]).
pub const UNSUBSCRIBE: &str = "unsubscribe";
/// Publisher -> server: publish ([`crate::PublishRequest`]), acked with [`PublishReply`].
pub const NOTIFY: &str = "notify";
/// Publisher -> server: `[user_id, event, payload]`, the form many backends already use.
pub const NOTIFY_USER: &str = "notify-user";
/// Publisher -> server: `[[user_ids], event, payload]`.
pub const NOTIFY_USERS: &str = "notify-users";

/// The subscriber handshake's `auth` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeAuth {
    /// The user token (a JWT signed by the hub).
    pub token: String,
    /// The highest id the client holds, or `null` for a first connection (the hub then
    /// sends the user's unread notifications, newest 200).
    #[serde(default)]
    pub cursor: Option<u64>,
    /// The store epoch the cursor belongs to (from an earlier [`Synced`]), if the client
    /// knows it. A hub whose store is in another epoch refuses the connection with
    /// `epoch_changed`: the client starts over (see [`Synced::epoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The publisher handshake's `auth` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublisherAuth {
    /// A publish key.
    pub key: String,
}

/// One batch of a catch-up, ascending by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncBatch {
    /// The notifications, ascending.
    pub notifications: Vec<Notification>,
    /// Whether more batches follow before [`Synced`].
    pub more: bool,
}

/// The end of a catch-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// The hub's highest id just before the catch-up read its last batch: every visible
    /// notification up to it was in this catch-up (or an earlier one). A client may set
    /// its cursor to `max(cursor, head)` once it has stored every batch of this catch-up.
    pub head: u64,
    /// The epoch of the hub's store: ids, and so cursors, only compare within one. A
    /// client keeps it with its cursor, sends it with its handshake, and starts over
    /// (forgets its cursor and the ids it has seen, and catches up from 0) when the hub
    /// says its store is in another epoch (a backup restored, a store replaced). Absent
    /// from hubs older than epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// Client -> server: everything up to `up_to` is stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRequest {
    /// The highest id stored.
    pub up_to: u64,
}

/// Mark notifications read: either a list of ids or everything up to an id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReadRequest {
    /// These ids.
    Ids {
        /// The ids.
        ids: Vec<u64>,
    },
    /// Every notification up to and including this id.
    UpTo {
        /// The highest id.
        up_to: u64,
    },
}

impl ReadRequest {
    /// Checks the request's size.
    pub fn validate(&self) -> Result<(), ErrorBody> {
        match self {
            ReadRequest::Ids { ids } if ids.len() > crate::limits::MAX_READ_IDS => {
                Err(ErrorBody::field(
                    ErrorCode::InvalidField,
                    "ids",
                    format!(
                        "at most {} ids per request; use up_to for more",
                        crate::limits::MAX_READ_IDS
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Server -> client: notifications were marked read by another device of the same user.
/// Same shape as [`ReadRequest`].
pub type ReadEvent = ReadRequest;

/// Client -> server: (un)subscribe to a topic; server -> client: a subscription changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRequest {
    /// The topic name.
    pub topic: String,
}

/// Client -> server: a no-op answered `{"ok": true}`, for clients whose library hides
/// Engine.IO's own pings and that want to check the connection end to end.
pub const HEARTBEAT: &str = "heartbeat";
/// Client -> server: send a catch-up again from this cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The highest id the client holds (`null`: unread only, as at a first connection).
    #[serde(default)]
    pub cursor: Option<u64>,
}

/// The reply to every client event, through the Socket.IO ack callback:
/// `{"ok": true}` or `{"error": {..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    /// The event was handled.
    Ok {
        /// Always `true`.
        ok: bool,
    },
    /// The event was refused.
    Error {
        /// Why.
        error: ErrorBody,
    },
}

impl Reply {
    /// The success reply.
    pub fn ok() -> Self {
        Reply::Ok { ok: true }
    }
}

impl From<ErrorBody> for Reply {
    fn from(error: ErrorBody) -> Self {
        Reply::Error { error }
    }
}

/// The reply to a publisher's `notify`: `{"id": .., "created_at": ..}` or `{"error": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PublishReply {
    /// Published (or a repeat of an idempotency key).
    Published(crate::PublishResponse),
    /// Refused.
    Error {
        /// Why.
        error: ErrorBody,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_cursor_may_be_null_or_absent() {
        let a: HandshakeAuth = serde_json::from_value(json!({"token": "t"})).expect("de");
        assert_eq!(a.cursor, None);
        let b: HandshakeAuth =
            serde_json::from_value(json!({"token": "t", "cursor": null})).expect("de");
        assert_eq!(b.cursor, None);
        let c: HandshakeAuth =
            serde_json::from_value(json!({"token": "t", "cursor": 42})).expect("de");
        assert_eq!(c.cursor, Some(42));
        assert_eq!(
            serde_json::from_value::<HandshakeAuth>(serde_json::to_value(&c).expect("ser"))
                .expect("de"),
            c
        );
        assert!(serde_json::from_value::<HandshakeAuth>(json!({"cursor": 1})).is_err());
        assert!(
            serde_json::from_value::<HandshakeAuth>(json!({"token": "t", "cursor": -1})).is_err()
        );
    }

    #[test]
    fn read_request_has_two_shapes() {
        let ids: ReadRequest = serde_json::from_value(json!({"ids": [1, 2]})).expect("de");
        assert_eq!(ids, ReadRequest::Ids { ids: vec![1, 2] });
        let up: ReadRequest = serde_json::from_value(json!({"up_to": 9})).expect("de");
        assert_eq!(up, ReadRequest::UpTo { up_to: 9 });
        assert_eq!(serde_json::to_value(&up).expect("ser"), json!({"up_to": 9}));
        assert!(serde_json::from_value::<ReadRequest>(json!({"all": true})).is_err());
    }

    #[test]
    fn replies_round_trip() {
        assert_eq!(
            serde_json::to_value(Reply::ok()).expect("ser"),
            json!({"ok": true})
        );
        let e = Reply::from(ErrorBody::new(ErrorCode::RateLimited, "slow down"));
        let v = serde_json::to_value(&e).expect("ser");
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(serde_json::from_value::<Reply>(v).expect("de"), e);

        let p = PublishReply::Published(crate::PublishResponse {
            id: 3,
            created_at: time::macros::datetime!(2026-01-01 0:00 UTC),
            duplicate: false,
        });
        let v = serde_json::to_value(&p).expect("ser");
        assert_eq!(v["id"], 3);
        assert_eq!(serde_json::from_value::<PublishReply>(v).expect("de"), p);
    }

    #[test]
    fn batches_round_trip() {
        let b = SyncBatch {
            notifications: vec![],
            more: true,
        };
        let v = serde_json::to_value(&b).expect("ser");
        assert_eq!(v, json!({"notifications": [], "more": true}));
        assert_eq!(serde_json::from_value::<SyncBatch>(v).expect("de"), b);
        let s = Synced {
            head: 10,
            epoch: Some("e1".into()),
        };
        let v = serde_json::to_value(&s).expect("ser");
        assert_eq!(v, json!({"head": 10, "epoch": "e1"}));
        assert_eq!(serde_json::from_value::<Synced>(v).expect("de"), s);
        // From a hub older than epochs.
        let old: Synced = serde_json::from_value(json!({"head": 3})).expect("de");
        assert_eq!(old.epoch, None);
    }
}
