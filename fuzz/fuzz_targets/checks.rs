//! What every accepted publish must satisfy, whichever door it came through.

use belfry_protocol::{PublishRequest, ValidPublish, limits};

/// Validates `request`; when the hub would accept it, checks it is within every limit.
pub fn validate(request: PublishRequest) -> Option<ValidPublish> {
    let valid = request.validate().ok()?;
    assert!(!valid.targets.is_empty(), "accepted with no target");
    assert!(valid.targets.len() <= limits::MAX_TARGETS);
    assert!(
        !valid.title.trim().is_empty(),
        "accepted with an empty title"
    );
    assert!(valid.title.chars().count() <= limits::MAX_TITLE_CHARS);
    assert!(valid.body.chars().count() <= limits::MAX_BODY_CHARS);
    assert!(valid.event.len() <= limits::MAX_EVENT_LEN);
    assert!(valid.tags.len() <= limits::MAX_TAGS);
    assert!(
        valid
            .tags
            .iter()
            .all(|t| t.chars().count() <= limits::MAX_TAG_CHARS)
    );
    assert!(valid.actions.len() <= limits::MAX_ACTIONS);
    assert!(
        valid
            .url
            .as_ref()
            .is_none_or(|u| u.len() <= limits::MAX_URL_LEN)
    );
    let data = serde_json::to_vec(&valid.data).expect("data serializes");
    assert!(data.len() <= limits::MAX_DATA_BYTES);
    assert!(valid.ttl.is_none_or(|t| t <= limits::MAX_TTL_SECS));
    assert!(
        valid
            .idempotency_key
            .as_ref()
            .is_none_or(|k| k.len() <= limits::MAX_IDEMPOTENCY_KEY_LEN)
    );
    Some(valid)
}
