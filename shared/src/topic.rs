//! Topic patterns: which topics a user token allows.

use serde::{Deserialize, Serialize};

/// The topics a token allows: exact names (`deploys`) or prefixes with a trailing `*`
/// (`team-a.*`). A lone `*` allows every topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicPatterns(Vec<String>);

impl TopicPatterns {
    /// Patterns from a list.
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// A set that allows every topic.
    pub fn any() -> Self {
        Self(vec!["*".into()])
    }

    /// The patterns as given.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether `topic` matches one of the patterns.
    pub fn allows(&self, topic: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
    }

    /// Checks every pattern: a topic name, optionally ending in `*`.
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.0 {
            let name = p.strip_suffix('*').unwrap_or(p);
            if name.is_empty() {
                continue;
            }
            crate::validate_topic(name).map_err(|e| format!("topic pattern {p:?}: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_patterns() {
        let p = TopicPatterns::new(vec!["deploys".into(), "team-a.*".into()]);
        assert!(p.allows("deploys"));
        assert!(!p.allows("deploys2"));
        assert!(p.allows("team-a.builds"));
        assert!(!p.allows("team-b.builds"));
        assert!(TopicPatterns::any().allows("anything"));
        assert!(!TopicPatterns::default().allows("deploys"));
    }

    #[test]
    fn validation_and_round_trip() {
        let p = TopicPatterns::new(vec!["ok".into(), "pre*".into(), "*".into()]);
        assert!(p.validate().is_ok());
        assert!(TopicPatterns::new(vec!["bad/x".into()]).validate().is_err());
        let json = serde_json::to_string(&p).expect("ser");
        assert_eq!(json, r#"["ok","pre*","*"]"#);
        let back: TopicPatterns = serde_json::from_str(&json).expect("de");
        assert_eq!(back, p);
    }
}
