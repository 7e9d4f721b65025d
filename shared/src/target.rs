//! Publish targets (`user:<id>`, `topic:<name>`, `all`) and the rules for user ids and
//! topic names.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The longest user id the hub accepts, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// The longest topic name the hub accepts, in bytes.
pub const MAX_TOPIC_LEN: usize = 64;

/// Who a notification is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// One user, on all of their devices: `user:<id>`.
    User(String),
    /// Every user subscribed to a topic: `topic:<name>`.
    Topic(String),
    /// Everyone: `all`.
    All,
}

/// Why a target string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not one of the three forms.
    #[error("unknown target {0:?}: expected \"user:<id>\", \"topic:<name>\" or \"all\"")]
    UnknownForm(String),
    /// The form is right but the user id breaks the rules.
    #[error("invalid user id: {0}")]
    InvalidUser(String),
    /// The form is right but the topic name breaks the rules.
    #[error("invalid topic name: {0}")]
    InvalidTopic(String),
}

impl Target {
    /// Parses `user:<id>`, `topic:<name>` or `all`.
    pub fn parse(s: &str) -> Result<Self, TargetError> {
        if s == "all" {
            return Ok(Target::All);
        }
        if let Some(user) = s.strip_prefix("user:") {
            validate_user_id(user).map_err(TargetError::InvalidUser)?;
            return Ok(Target::User(user.to_owned()));
        }
        if let Some(topic) = s.strip_prefix("topic:") {
            validate_topic(topic).map_err(TargetError::InvalidTopic)?;
            return Ok(Target::Topic(topic.to_owned()));
        }
        Err(TargetError::UnknownForm(s.chars().take(80).collect()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::User(u) => write!(f, "user:{u}"),
            Target::Topic(t) => write!(f, "topic:{t}"),
            Target::All => f.write_str("all"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let s = String::deserialize(de)?;
        Target::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a user id: 1 to 128 bytes of letters, digits and `. _ - @ +`.
pub fn validate_user_id(id: &str) -> Result<(), String> {
    validate_name(id, MAX_USER_ID_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')
    })
    .map_err(|why| format!("user id {why} (letters, digits and . _ - @ +)"))
}

/// Checks a topic name: 1 to 64 bytes of letters, digits and `. _ -`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    validate_name(topic, MAX_TOPIC_LEN, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
    })
    .map_err(|why| format!("topic name {why} (letters, digits and . _ -)"))
}

fn validate_name(name: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!("must not contain {bad:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_round_trips() {
        for (text, want) in [
            ("all", Target::All),
            ("user:alice", Target::User("alice".into())),
            (
                "user:bob@example.com",
                Target::User("bob@example.com".into()),
            ),
            ("topic:deploys", Target::Topic("deploys".into())),
        ] {
            let got = Target::parse(text).expect("valid target");
            assert_eq!(got, want);
            assert_eq!(got.to_string(), text);
            let json = serde_json::to_string(&got).expect("ser");
            let back: Target = serde_json::from_str(&json).expect("de");
            assert_eq!(back, got);
        }
    }

    #[test]
    fn refuses_other_forms_and_bad_names() {
        assert!(matches!(
            Target::parse("group:x"),
            Err(TargetError::UnknownForm(_))
        ));
        assert!(matches!(
            Target::parse("ALL"),
            Err(TargetError::UnknownForm(_))
        ));
        assert!(matches!(
            Target::parse("user:"),
            Err(TargetError::InvalidUser(_))
        ));
        assert!(matches!(
            Target::parse("user:a b"),
            Err(TargetError::InvalidUser(_))
        ));
        assert!(matches!(
            Target::parse("topic:a/b"),
            Err(TargetError::InvalidTopic(_))
        ));
        assert!(matches!(
            Target::parse(&format!("topic:{}", "x".repeat(65))),
            Err(TargetError::InvalidTopic(_))
        ));
        assert!(Target::parse(&format!("topic:{}", "x".repeat(64))).is_ok());
        assert!(Target::parse(&format!("user:{}", "u".repeat(129))).is_err());
    }
}
