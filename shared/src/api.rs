//! Bodies of the HTTP API's responses (requests reuse [`crate::PublishRequest`] and
//! [`crate::events::ReadRequest`]).

use crate::Notification;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `GET /api/v1/notifications`: one page, ascending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationPage {
    /// The notifications, ascending by id, each with the user's read state.
    pub notifications: Vec<Notification>,
    /// The `after` to ask for the next page, or `null` when this was the last one.
    pub next: Option<u64>,
    /// The epoch of the hub's store: ids only compare within one (see
    /// [`crate::events::Synced::epoch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// `POST /api/v1/notifications/read`: how many notifications changed to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResult {
    /// Notifications newly marked read.
    pub marked: u64,
}

/// One recipient's state of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The user.
    pub user: String,
    /// When the first of the user's devices acknowledged it, if one has.
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// When the user read it, if they have.
    #[serde(with = "time::serde::rfc3339::option")]
    pub read_at: Option<OffsetDateTime>,
}

/// `GET /api/v1/notifications/<id>/receipts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    /// The notification.
    pub id: u64,
    /// Users it was addressed to by name, and every other user who received or read it.
    pub receipts: Vec<Receipt>,
}

/// `GET /api/v1/presence/<user>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Whether at least one device is connected.
    pub online: bool,
    /// How many devices (Socket.IO connections) are connected.
    pub devices: u64,
}

/// `GET /api/v1/subscriptions` and the answer to `PUT`/`DELETE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriptions {
    /// The user's topics, sorted.
    pub topics: Vec<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `"ok"` or `"unavailable"`.
    pub status: String,
    /// The hub's version.
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn receipts_round_trip_with_nulls() {
        let r = Receipts {
            id: 5,
            receipts: vec![Receipt {
                user: "alice".into(),
                delivered_at: Some(time::macros::datetime!(2026-11-22 10:00 UTC)),
                read_at: None,
            }],
        };
        let v = serde_json::to_value(&r).expect("ser");
        assert_eq!(v["receipts"][0]["read_at"], serde_json::Value::Null);
        assert_eq!(v["receipts"][0]["delivered_at"], "2026-11-22T10:00:00Z");
        assert_eq!(serde_json::from_value::<Receipts>(v).expect("de"), r);
    }

    #[test]
    fn small_bodies_round_trip() {
        let p = Presence {
            online: true,
            devices: 2,
        };
        assert_eq!(
            serde_json::to_value(p).expect("ser"),
            json!({"online": true, "devices": 2})
        );
        let s = Subscriptions {
            topics: vec!["a".into()],
        };
        assert_eq!(
            serde_json::from_value::<Subscriptions>(serde_json::to_value(&s).expect("ser"))
                .expect("de"),
            s
        );
        let page = NotificationPage {
            notifications: vec![],
            next: None,
            epoch: Some("e1".into()),
        };
        assert_eq!(
            serde_json::to_value(&page).expect("ser"),
            json!({"notifications": [], "next": null, "epoch": "e1"})
        );
        let r = ReadResult { marked: 3 };
        assert_eq!(
            serde_json::from_value::<ReadResult>(serde_json::to_value(r).expect("ser"))
                .expect("de"),
            r
        );
    }
}
