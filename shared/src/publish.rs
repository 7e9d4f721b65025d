//! The publish request and its validation, so the hub and every client agree on what a
//! valid notification is.

use crate::{Action, ErrorBody, ErrorCode, Priority, Target};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The `event` a notification gets when the publisher names none.
pub const DEFAULT_EVENT: &str = "notification";

/// The limits a publish request must keep.
pub mod limits {
    /// Largest request body the hub reads, in bytes.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    /// Most targets in one request.
    pub const MAX_TARGETS: usize = 100;
    /// Longest title, in characters.
    pub const MAX_TITLE_CHARS: usize = 256;
    /// Longest body, in characters.
    pub const MAX_BODY_CHARS: usize = 4096;
    /// Longest event name, in bytes.
    pub const MAX_EVENT_LEN: usize = 64;
    /// Most tags.
    pub const MAX_TAGS: usize = 10;
    /// Longest tag, in characters.
    pub const MAX_TAG_CHARS: usize = 64;
    /// Most actions (buttons).
    pub const MAX_ACTIONS: usize = 3;
    /// Longest action label, in characters.
    pub const MAX_ACTION_LABEL_CHARS: usize = 64;
    /// Longest URL, in bytes.
    pub const MAX_URL_LEN: usize = 2048;
    /// Deepest nesting of arrays and objects in `data`.
    pub const MAX_DATA_DEPTH: usize = 32;
    /// Largest `data`, serialized, in bytes.
    pub const MAX_DATA_BYTES: usize = 32 * 1024;
    /// Longest idempotency key, in bytes.
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
    /// Longest time to live: 366 days.
    pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;
    /// Most ids in one `read` request (`up_to` covers more).
    pub const MAX_READ_IDS: usize = 1000;
}

/// A request to publish a notification, as a publisher sends it (HTTP body or the
/// `/publisher` namespace's `notify` event). Check it with [`PublishRequest::validate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Targets: `"user:<id>"`, `"topic:<name>"` or `"all"`; at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<String>>,
    /// The headline: 1 to 256 characters. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The kind of event (default `"notification"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The text, up to 4096 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// How urgent (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Labels, up to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// What clicking opens (`http` or `https`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Buttons, up to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Action>>,
    /// Any JSON, passed through to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Seconds until the hub forgets it (default: the hub's configured retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// A repeat of the same key within 24 hours returns the first id and notifies nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A publish request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPublish {
    /// The targets, without duplicates, in the order given.
    pub targets: Vec<Target>,
    /// The event name.
    pub event: String,
    /// The title.
    pub title: String,
    /// The body (possibly empty).
    pub body: String,
    /// The priority.
    pub priority: Priority,
    /// The tags.
    pub tags: Vec<String>,
    /// The click URL.
    pub url: Option<String>,
    /// The buttons.
    pub actions: Vec<Action>,
    /// The attached JSON (`null` when none).
    pub data: serde_json::Value,
    /// The requested time to live, if any.
    pub ttl: Option<u64>,
    /// The idempotency key, if any.
    pub idempotency_key: Option<String>,
}

impl ValidPublish {
    /// The topic shown on the wire: the first topic target, if any.
    pub fn topic(&self) -> Option<&str> {
        self.targets.iter().find_map(|t| match t {
            Target::Topic(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

/// The answer to a successful publish: `201 {"id": .., "created_at": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The notification's id.
    pub id: u64,
    /// When it was stored.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// `true` when this was a repeat of an idempotency key and nothing new was published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ErrorBody {
    ErrorBody::field(ErrorCode::InvalidField, field, message)
}

fn check_chars(field: &str, value: &str, min: usize, max: usize) -> Result<(), ErrorBody> {
    let n = value.chars().count();
    if n < min {
        return Err(invalid(field, format!("{field} must not be empty")));
    }
    if n > max {
        return Err(invalid(
            field,
            format!("{field} must be at most {max} characters (got {n})"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// Checks a URL a client will open: absolute `http` or `https`, a host, no whitespace,
/// at most 2048 bytes.
pub fn validate_url(url: &str) -> Result<(), String> {
    if url.len() > limits::MAX_URL_LEN {
        return Err(format!("must be at most {} bytes", limits::MAX_URL_LEN));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.starts_with('@') {
        return Err("must name a host".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(())
}

fn json_depth(v: &serde_json::Value) -> usize {
    // Iterative, so a hostile document cannot overflow the stack here.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

impl PublishRequest {
    /// Checks every field against the contract and returns the normalised request, or the
    /// first field at fault.
    pub fn validate(self) -> Result<ValidPublish, ErrorBody> {
        let to = self
            .to
            .ok_or_else(|| ErrorBody::field(ErrorCode::MissingField, "to", "to is required"))?;
        if to.is_empty() {
            return Err(invalid("to", "to must name at least one target"));
        }
        if to.len() > limits::MAX_TARGETS {
            return Err(invalid(
                "to",
                format!("to may name at most {} targets", limits::MAX_TARGETS),
            ));
        }
        let mut targets: Vec<Target> = Vec::with_capacity(to.len());
        for (i, raw) in to.iter().enumerate() {
            let target = Target::parse(raw).map_err(|e| {
                let code = match e {
                    crate::TargetError::UnknownForm(_) => ErrorCode::UnknownTarget,
                    _ => ErrorCode::InvalidField,
                };
                ErrorBody::field(code, format!("to[{i}]"), e.to_string())
            })?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }

        let title = self.title.ok_or_else(|| {
            ErrorBody::field(ErrorCode::MissingField, "title", "title is required")
        })?;
        check_chars("title", &title, 1, limits::MAX_TITLE_CHARS)?;
        if title.trim().is_empty() {
            return Err(invalid("title", "title must not be blank"));
        }

        let event = self.event.unwrap_or_else(|| DEFAULT_EVENT.to_owned());
        if event.is_empty()
            || event.len() > limits::MAX_EVENT_LEN
            || !event
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
        {
            return Err(invalid(
                "event",
                format!(
                    "event must be 1 to {} characters of letters, digits and . _ - :",
                    limits::MAX_EVENT_LEN
                ),
            ));
        }

        let body = self.body.unwrap_or_default();
        check_chars("body", &body, 0, limits::MAX_BODY_CHARS)?;

        let tags = self.tags.unwrap_or_default();
        if tags.len() > limits::MAX_TAGS {
            return Err(invalid(
                "tags",
                format!("at most {} tags", limits::MAX_TAGS),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            check_chars(&format!("tags[{i}]"), tag, 1, limits::MAX_TAG_CHARS)?;
        }

        if let Some(url) = &self.url {
            validate_url(url).map_err(|e| invalid("url", format!("url {e}")))?;
        }

        let actions = self.actions.unwrap_or_default();
        if actions.len() > limits::MAX_ACTIONS {
            return Err(invalid(
                "actions",
                format!("at most {} actions", limits::MAX_ACTIONS),
            ));
        }
        for (i, action) in actions.iter().enumerate() {
            check_chars(
                &format!("actions[{i}].label"),
                &action.label,
                1,
                limits::MAX_ACTION_LABEL_CHARS,
            )?;
            validate_url(&action.url)
                .map_err(|e| invalid(format!("actions[{i}].url"), format!("url {e}")))?;
        }

        let data = self.data.unwrap_or(serde_json::Value::Null);
        if json_depth(&data) > limits::MAX_DATA_DEPTH {
            return Err(invalid(
                "data",
                format!("data may nest at most {} levels", limits::MAX_DATA_DEPTH),
            ));
        }
        let data_len = serde_json::to_vec(&data)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if data_len > limits::MAX_DATA_BYTES {
            return Err(invalid(
                "data",
                format!("data must be at most {} bytes", limits::MAX_DATA_BYTES),
            ));
        }

        if let Some(ttl) = self.ttl
            && (ttl == 0 || ttl > limits::MAX_TTL_SECS)
        {
            return Err(invalid(
                "ttl",
                format!("ttl must be 1 to {} seconds", limits::MAX_TTL_SECS),
            ));
        }

        if let Some(key) = &self.idempotency_key
            && (key.is_empty()
                || key.len() > limits::MAX_IDEMPOTENCY_KEY_LEN
                || key.chars().any(|c| c.is_control()))
        {
            return Err(invalid(
                "idempotency_key",
                format!(
                    "idempotency_key must be 1 to {} bytes without control characters",
                    limits::MAX_IDEMPOTENCY_KEY_LEN
                ),
            ));
        }

        Ok(ValidPublish {
            targets,
            event,
            title,
            body,
            priority: self.priority.unwrap_or_default(),
            tags,
            url: self.url,
            actions,
            data,
            ttl: self.ttl,
            idempotency_key: self.idempotency_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> PublishRequest {
        PublishRequest {
            to: Some(vec!["user:alice".into()]),
            title: Some("Hello".into()),
            ..Default::default()
        }
    }

    fn err(req: PublishRequest) -> ErrorBody {
        req.validate().expect_err("should be refused")
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let v = base().validate().expect("valid");
        assert_eq!(v.targets, vec![Target::User("alice".into())]);
        assert_eq!(v.event, DEFAULT_EVENT);
        assert_eq!(v.priority, Priority::Default);
        assert_eq!(v.body, "");
        assert_eq!(v.data, serde_json::Value::Null);
        assert_eq!(v.topic(), None);
    }

    #[test]
    fn full_request_round_trips_and_validates() {
        let raw = json!({
            "to": ["user:alice", "topic:deploys", "all", "user:alice"],
            "title": "Deploy finished",
            "event": "deploy.done",
            "body": "api v42 is live",
            "priority": "high",
            "tags": ["deploy", "api"],
            "url": "https://ci.example.com/runs/42",
            "actions": [{"label": "Logs", "url": "https://ci.example.com/runs/42/logs"}],
            "data": {"run": 42, "ok": true},
            "ttl": 3600,
            "idempotency_key": "run-42"
        });
        let req: PublishRequest = serde_json::from_value(raw.clone()).expect("parse");
        assert_eq!(serde_json::to_value(&req).expect("ser"), raw);
        let v = req.validate().expect("valid");
        assert_eq!(v.targets.len(), 3, "duplicate target dropped");
        assert_eq!(v.topic(), Some("deploys"));
        assert_eq!(v.ttl, Some(3600));
    }

    #[test]
    fn every_field_is_checked() {
        let cases: Vec<(PublishRequest, ErrorCode, &str)> = vec![
            (
                PublishRequest { to: None, ..base() },
                ErrorCode::MissingField,
                "to",
            ),
            (
                PublishRequest {
                    to: Some(vec![]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "to",
            ),
            (
                PublishRequest {
                    to: Some(vec!["all".into(), "room:x".into()]),
                    ..base()
                },
                ErrorCode::UnknownTarget,
                "to[1]",
            ),
            (
                PublishRequest {
                    to: Some(vec!["user:a b".into()]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "to[0]",
            ),
            (
                PublishRequest {
                    to: Some(vec!["all".into(); 101]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "to",
            ),
            (
                PublishRequest {
                    title: None,
                    ..base()
                },
                ErrorCode::MissingField,
                "title",
            ),
            (
                PublishRequest {
                    title: Some(String::new()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "title",
            ),
            (
                PublishRequest {
                    title: Some("   ".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "title",
            ),
            (
                PublishRequest {
                    title: Some("x".repeat(257)),
                    ..base()
                },
                ErrorCode::InvalidField,
                "title",
            ),
            (
                PublishRequest {
                    title: Some("a\u{0}b".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "title",
            ),
            (
                PublishRequest {
                    event: Some("has space".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "event",
            ),
            (
                PublishRequest {
                    event: Some(String::new()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "event",
            ),
            (
                PublishRequest {
                    body: Some("b".repeat(4097)),
                    ..base()
                },
                ErrorCode::InvalidField,
                "body",
            ),
            (
                PublishRequest {
                    tags: Some(vec!["t".into(); 11]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "tags",
            ),
            (
                PublishRequest {
                    tags: Some(vec![String::new()]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "tags[0]",
            ),
            (
                PublishRequest {
                    url: Some("javascript:alert(1)".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "url",
            ),
            (
                PublishRequest {
                    url: Some("https://".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "url",
            ),
            (
                PublishRequest {
                    url: Some("https://a b".into()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "url",
            ),
            (
                PublishRequest {
                    actions: Some(vec![
                        Action {
                            label: "x".into(),
                            url: "https://a".into()
                        };
                        4
                    ]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "actions",
            ),
            (
                PublishRequest {
                    actions: Some(vec![Action {
                        label: String::new(),
                        url: "https://a".into(),
                    }]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "actions[0].label",
            ),
            (
                PublishRequest {
                    actions: Some(vec![Action {
                        label: "Go".into(),
                        url: "file:///etc/passwd".into(),
                    }]),
                    ..base()
                },
                ErrorCode::InvalidField,
                "actions[0].url",
            ),
            (
                PublishRequest {
                    ttl: Some(0),
                    ..base()
                },
                ErrorCode::InvalidField,
                "ttl",
            ),
            (
                PublishRequest {
                    ttl: Some(limits::MAX_TTL_SECS + 1),
                    ..base()
                },
                ErrorCode::InvalidField,
                "ttl",
            ),
            (
                PublishRequest {
                    idempotency_key: Some(String::new()),
                    ..base()
                },
                ErrorCode::InvalidField,
                "idempotency_key",
            ),
            (
                PublishRequest {
                    idempotency_key: Some("k".repeat(129)),
                    ..base()
                },
                ErrorCode::InvalidField,
                "idempotency_key",
            ),
            (
                PublishRequest {
                    data: Some(json!({"blob": "x".repeat(limits::MAX_DATA_BYTES)})),
                    ..base()
                },
                ErrorCode::InvalidField,
                "data",
            ),
        ];
        for (req, code, field) in cases {
            let e = err(req);
            assert_eq!(e.code, code, "{e:?}");
            assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let ok = PublishRequest {
            title: Some("é".repeat(256)),
            body: Some("b".repeat(4096)),
            tags: Some(vec!["t".into(); 10]),
            ttl: Some(limits::MAX_TTL_SECS),
            ..base()
        };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn deep_data_is_refused_without_recursion() {
        let mut v = json!(1);
        for _ in 0..limits::MAX_DATA_DEPTH {
            v = json!([v]);
        }
        let e = err(PublishRequest {
            data: Some(v),
            ..base()
        });
        assert_eq!(e.field.as_deref(), Some("data"));
        let mut ok = json!(1);
        for _ in 0..limits::MAX_DATA_DEPTH - 1 {
            ok = json!({"k": ok});
        }
        assert!(
            PublishRequest {
                data: Some(ok),
                ..base()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn urls() {
        assert!(validate_url("https://example.com").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/x?y=1#z").is_ok());
        assert!(validate_url("ftp://example.com").is_err());
        assert!(validate_url("https://:80").is_err());
        assert!(validate_url(&format!("https://e.com/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn publish_response_round_trips() {
        let r = PublishResponse {
            id: 7,
            created_at: time::macros::datetime!(2026-11-22 10:00:00.5 UTC),
            duplicate: false,
        };
        let v = serde_json::to_value(&r).expect("ser");
        assert_eq!(v, json!({"id": 7, "created_at": "2026-11-22T10:00:00.5Z"}));
        assert_eq!(serde_json::from_value::<PublishResponse>(v).expect("de"), r);
    }
}
