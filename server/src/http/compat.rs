//! `POST /send`: the socket.io-notify form, so its publishers can switch without changes.
//!
//! Header `notification_secret: <publish key>`; form or JSON fields `notification` (a
//! string, or a JSON object with `title`, `body`/`message`, `url`, `priority`) and
//! `channel` / `channel[]` (one or more), each mapped to the topic of that name. Without a
//! channel the notification goes to everyone, as socket.io-notify broadcasts.

use super::extract::{Publisher, body_bytes, decode_json, is_json};
use crate::error::HubError;
use crate::socket::publisher::legacy_request;
use crate::state::SharedState;
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use belfry_protocol::{ErrorCode, PublishRequest, PublishResponse, limits};
use serde_json::Value;
use socketioxide::adapter::Adapter;
use std::time::Instant;

/// `POST /send`.
pub async fn send<A: Adapter>(
    State(state): State<SharedState<A>>,
    req: Request,
) -> Result<(StatusCode, Json<PublishResponse>), HubError> {
    let received = Instant::now();
    let (parts, body) = req.into_parts();
    let address = super::extract::client_address(&parts, &state);
    let key = parts
        .headers
        .get("notification_secret")
        .and_then(|v| v.to_str().ok());
    let Publisher(key) = Publisher::check(&state, address, key).map_err(|e| match e {
        HubError::Refused(refused) if refused.code == ErrorCode::Unauthorized => HubError::new(
            ErrorCode::Unauthorized,
            "send the publish key in the notification_secret header",
        ),
        other => other,
    })?;
    let json = is_json(&parts.headers);
    let form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !json && !form {
        return Err(HubError::new(
            ErrorCode::UnsupportedMediaType,
            "send application/x-www-form-urlencoded or application/json",
        ));
    }
    let bytes = body_bytes(Request::from_parts(parts, body), &state).await?;
    let request = decode_send(&bytes, json)?;
    let p = state.publishing.publish(key, request, received).await?;
    Ok((
        StatusCode::CREATED,
        Json(PublishResponse {
            id: p.id,
            created_at: p.created_at,
            duplicate: p.duplicate,
        }),
    ))
}

/// Decodes a `/send` body (JSON when `json`, a URL-encoded form otherwise) into the
/// publish request it stands for (still to be validated).
pub fn decode_send(bytes: &[u8], json: bool) -> Result<PublishRequest, HubError> {
    let (notification, channels) = if json {
        from_json(decode_json(bytes)?)?
    } else {
        from_form(bytes)?
    };
    to_request(notification, channels)
}

fn from_json(body: Value) -> Result<(Value, Vec<String>), HubError> {
    let Value::Object(mut fields) = body else {
        return Err(HubError::new(
            ErrorCode::InvalidJson,
            "the body must be a JSON object with notification and channel",
        ));
    };
    let notification = fields.remove("notification").unwrap_or(Value::Null);
    let mut channels = Vec::new();
    for key in ["channel", "channel[]", "channels"] {
        match fields.remove(key) {
            Some(Value::String(c)) => channels.push(c),
            Some(Value::Array(list)) => {
                for c in list {
                    match c {
                        Value::String(c) => channels.push(c),
                        _ => return Err(bad_channel()),
                    }
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => return Err(bad_channel()),
        }
    }
    Ok((notification, channels))
}

fn from_form(bytes: &[u8]) -> Result<(Value, Vec<String>), HubError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|e| {
        HubError::new(
            ErrorCode::InvalidJson,
            format!("cannot decode the form: {e}"),
        )
    })?;
    let mut notification = Value::Null;
    let mut channels = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "notification" => notification = Value::String(v),
            "channel" | "channel[]" => channels.push(v),
            _ if k.starts_with("channel[") => channels.push(v),
            _ => {}
        }
    }
    Ok((notification, channels))
}

fn bad_channel() -> HubError {
    HubError::new(
        ErrorCode::InvalidField,
        "channel must be a string or an array of strings",
    )
}

fn to_request(notification: Value, channels: Vec<String>) -> Result<PublishRequest, HubError> {
    let targets: Vec<String> = if channels.is_empty() {
        vec!["all".into()]
    } else {
        channels.iter().map(|c| format!("topic:{c}")).collect()
    };
    // A string that holds a JSON object is treated as that object.
    let notification = match notification {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(obj @ Value::Object(_)) => obj,
            _ => Value::String(s),
        },
        other => other,
    };
    match notification {
        Value::Object(_) => Ok(legacy_request(targets, "notification".into(), notification)),
        Value::String(text) => {
            let first_line = text.lines().next().unwrap_or_default();
            let title: String = first_line.chars().take(limits::MAX_TITLE_CHARS).collect();
            let body = (title != text).then(|| text.chars().take(limits::MAX_BODY_CHARS).collect());
            Ok(PublishRequest {
                to: Some(targets),
                title: Some(title),
                body,
                ..Default::default()
            })
        }
        Value::Null => Err(HubError::new(
            ErrorCode::MissingField,
            "notification is required",
        )),
        _ => Err(HubError::new(
            ErrorCode::InvalidField,
            "notification must be a string or a JSON object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_fields_map_to_topics() {
        let (n, c) =
            from_form(b"notification=Build+done&channel[]=ci&channel[]=ops").expect("form");
        assert_eq!(n, json!("Build done"));
        assert_eq!(c, vec!["ci", "ops"]);
        let req = to_request(n, c).expect("request");
        assert_eq!(req.to, Some(vec!["topic:ci".into(), "topic:ops".into()]));
        assert_eq!(req.title.as_deref(), Some("Build done"));
        assert_eq!(req.body, None);
    }

    #[test]
    fn json_notification_objects_keep_their_fields() {
        let (n, c) = from_json(json!({
            "notification": {"title": "Disk full", "message": "/var at 99%", "priority": "high"},
            "channel": "ops"
        }))
        .expect("json");
        let req = to_request(n, c).expect("request");
        assert_eq!(req.title.as_deref(), Some("Disk full"));
        assert_eq!(req.body.as_deref(), Some("/var at 99%"));
        assert_eq!(req.priority, Some(belfry_protocol::Priority::High));
        assert!(req.data.is_some());
    }

    #[test]
    fn long_text_splits_into_title_and_body_and_no_channel_means_all() {
        let text = format!("{}\nsecond line", "x".repeat(300));
        let req = to_request(Value::String(text.clone()), vec![]).expect("request");
        assert_eq!(req.to, Some(vec!["all".into()]));
        assert_eq!(req.title.map(|t| t.chars().count()), Some(256));
        assert_eq!(req.body, Some(text));
        assert!(to_request(Value::Null, vec![]).is_err());
        assert!(from_json(json!({"notification": "x", "channel": 5})).is_err());
    }
}
