//! Error codes and the error body every failed request carries.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code.
///
/// The string form (`as_str`, and the serde representation) never changes once
/// released; clients branch on it. The message next to it is for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON (or not a valid form), or is nested too deeply.
    InvalidJson,
    /// A required field is missing.
    MissingField,
    /// A field is present but its value breaks a rule (length, format, range).
    InvalidField,
    /// A target is not `user:<id>`, `topic:<name>` or `all`.
    UnknownTarget,
    /// The request body is larger than the hub accepts.
    PayloadTooLarge,
    /// The request's `Content-Type` is not one the endpoint accepts.
    UnsupportedMediaType,
    /// No credentials were given, or they are not of the kind this endpoint needs.
    Unauthorized,
    /// The token is not a well-formed JWT.
    TokenMalformed,
    /// The token's signature does not match the hub's secret, or its algorithm is not HS256.
    TokenBadSignature,
    /// The token has expired.
    TokenExpired,
    /// The publish key is not one the hub knows.
    InvalidPublishKey,
    /// The credentials are valid but do not allow this action.
    Forbidden,
    /// The token does not allow this topic.
    TopicNotAllowed,
    /// The user already has the maximum number of subscriptions.
    TooManySubscriptions,
    /// The user already has the maximum number of devices connected.
    TooManyDevices,
    /// The client's cursor belongs to another epoch of the hub's store: start over.
    EpochChanged,
    /// The thing asked for does not exist.
    NotFound,
    /// The endpoint exists but does not take this HTTP method.
    MethodNotAllowed,
    /// Too many requests or events; retry later (HTTP gives `Retry-After`).
    RateLimited,
    /// The hub's store is unreachable or the hub is shutting down.
    Unavailable,
    /// An unexpected failure inside the hub; nothing was changed.
    Internal,
}

impl ErrorCode {
    /// The stable string form of the code, as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenMalformed => "token_malformed",
            ErrorCode::TokenBadSignature => "token_bad_signature",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidPublishKey => "invalid_publish_key",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TopicNotAllowed => "topic_not_allowed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::EpochChanged => "epoch_changed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::MissingField
            | ErrorCode::InvalidField
            | ErrorCode::UnknownTarget => 400,
            ErrorCode::Unauthorized
            | ErrorCode::TokenMalformed
            | ErrorCode::TokenBadSignature
            | ErrorCode::TokenExpired
            | ErrorCode::InvalidPublishKey => 401,
            ErrorCode::Forbidden
            | ErrorCode::TopicNotAllowed
            | ErrorCode::TooManySubscriptions
            | ErrorCode::TooManyDevices => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::EpochChanged => 409,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong: a stable code, a message for people and, for validation errors, the
/// field at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// The stable code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// The request field at fault, when there is one (for example `"title"` or `"to[1]"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    /// An error about one field of the request.
    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

/// The body of every failed HTTP request: `{"error": {"code": .., "message": ..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_stable_strings() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::TokenExpired,
            ErrorCode::RateLimited,
            ErrorCode::TooManySubscriptions,
        ] {
            let json = serde_json::to_value(code).expect("serialize");
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
            let back: ErrorCode = serde_json::from_value(json).expect("deserialize");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn error_response_round_trips_and_omits_missing_field() {
        let resp = ErrorResponse {
            error: ErrorBody::new(ErrorCode::NotFound, "no such notification"),
        };
        let text = serde_json::to_string(&resp).expect("serialize");
        assert_eq!(
            text,
            r#"{"error":{"code":"not_found","message":"no such notification"}}"#
        );
        let back: ErrorResponse = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, resp);

        let with_field = ErrorBody::field(ErrorCode::InvalidField, "title", "too long");
        let back: ErrorBody =
            serde_json::from_str(&serde_json::to_string(&with_field).expect("ser")).expect("de");
        assert_eq!(back.field.as_deref(), Some("title"));
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ErrorCode::MissingField.http_status(), 400);
        assert_eq!(ErrorCode::TokenBadSignature.http_status(), 401);
        assert_eq!(ErrorCode::TopicNotAllowed.http_status(), 403);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::UnsupportedMediaType.http_status(), 415);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
    }
}
