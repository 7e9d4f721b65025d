//! The notification object, as hub and clients exchange it.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

/// How urgent a notification is. Clients map it to popup behaviour: `min` and `low`
/// normally land in history only, `urgent` stays on screen until dismissed.
///
/// On the wire it is a lower-case name; on input the numbers 1 to 5 (ntfy's scale) are
/// accepted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// 1: background information.
    Min,
    /// 2: worth keeping, not worth interrupting for.
    Low,
    /// 3: the default.
    #[default]
    Default,
    /// 4: should be seen soon.
    High,
    /// 5: needs attention now.
    Urgent,
}

impl Priority {
    /// All priorities, lowest first.
    pub const ALL: [Priority; 5] = [
        Priority::Min,
        Priority::Low,
        Priority::Default,
        Priority::High,
        Priority::Urgent,
    ];

    /// The priority as a number from 1 (min) to 5 (urgent).
    pub fn level(self) -> u8 {
        match self {
            Priority::Min => 1,
            Priority::Low => 2,
            Priority::Default => 3,
            Priority::High => 4,
            Priority::Urgent => 5,
        }
    }

    /// The priority for a number from 1 to 5.
    pub fn from_level(level: u8) -> Option<Self> {
        Priority::ALL
            .get(usize::from(level).checked_sub(1)?)
            .copied()
    }

    /// The lower-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Min => "min",
            Priority::Low => "low",
            Priority::Default => "default",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }

    /// Parses a name (`"high"`) or a level (`"4"`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .or_else(|| s.parse::<u8>().ok().and_then(Priority::from_level))
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Level(u64),
        }
        let err = || {
            serde::de::Error::custom(
                "priority must be one of min, low, default, high, urgent (or 1 to 5)",
            )
        };
        match Raw::deserialize(de)? {
            Raw::Name(name) => Priority::parse(&name).ok_or_else(err),
            Raw::Level(level) => u8::try_from(level)
                .ok()
                .and_then(Priority::from_level)
                .ok_or_else(err),
        }
    }
}

/// A button on a notification: a label and the URL it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The button text.
    pub label: String,
    /// What the button opens (`http` or `https`).
    pub url: String,
}

/// A notification as delivered to a client.
///
/// `id` increases with publish order across the whole hub; a client keeps the highest id
/// it holds as its cursor (see `docs/PROTOCOL.md` for when it may advance it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Positive, increasing with publish order; the client's cursor.
    pub id: u64,
    /// The kind of event, chosen by the publisher (default `"notification"`).
    pub event: String,
    /// The headline.
    pub title: String,
    /// The text; empty when the publisher gave none.
    #[serde(default)]
    pub body: String,
    /// How urgent it is.
    #[serde(default)]
    pub priority: Priority,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What clicking the notification opens, if anything.
    #[serde(default)]
    pub url: Option<String>,
    /// Buttons.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Any JSON the publisher attached; `null` when none.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The topic it was published to, or `null` when it was addressed to users or `all`.
    #[serde(default)]
    pub topic: Option<String>,
    /// When the hub stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the hub forgets it.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Whether the receiving user has read it (on any of their devices).
    #[serde(default)]
    pub read: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Notification {
        Notification {
            id: 123,
            event: "export.ready".into(),
            title: "Your export is ready".into(),
            body: "3 files, 12 MB".into(),
            priority: Priority::High,
            tags: vec!["export".into()],
            url: Some("https://example.com/exports/9".into()),
            actions: vec![Action {
                label: "Open".into(),
                url: "https://example.com/exports/9".into(),
            }],
            data: json!({"export_id": 9}),
            topic: None,
            created_at: time::macros::datetime!(2026-11-22 10:00:00 UTC),
            expires_at: time::macros::datetime!(2026-11-29 10:00:00 UTC),
            read: false,
        }
    }

    #[test]
    fn notification_round_trips() {
        let n = sample();
        let text = serde_json::to_string(&n).expect("serialize");
        let back: Notification = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, n);
    }

    #[test]
    fn notification_wire_shape_matches_the_contract() {
        let v = serde_json::to_value(sample()).expect("serialize");
        assert_eq!(v["id"], 123);
        assert_eq!(v["priority"], "high");
        assert_eq!(v["topic"], serde_json::Value::Null);
        assert_eq!(v["created_at"], "2026-11-22T10:00:00Z");
        assert_eq!(v["actions"][0]["label"], "Open");
        assert_eq!(v["read"], false);
    }

    #[test]
    fn priority_accepts_names_and_levels() {
        for (input, want) in [
            (json!("min"), Priority::Min),
            (json!("URGENT"), Priority::Urgent),
            (json!(4), Priority::High),
            (json!("2"), Priority::Low),
        ] {
            let got: Priority = serde_json::from_value(input).expect("valid priority");
            assert_eq!(got, want);
        }
        for bad in [json!("loud"), json!(0), json!(6), json!(-1), json!(true)] {
            assert!(serde_json::from_value::<Priority>(bad).is_err());
        }
        for p in Priority::ALL {
            assert_eq!(Priority::from_level(p.level()), Some(p));
            let back: Priority =
                serde_json::from_value(serde_json::to_value(p).expect("ser")).expect("de");
            assert_eq!(back, p);
        }
    }
}
