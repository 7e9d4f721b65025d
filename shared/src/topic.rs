//! Topic patterns: which topics a user token allows.

use serde::{Deserialize, Serialize};

/// The topics a token allows: exact names (`deploys`), or a prefix that ends in a
/// separator (`.`, `-` or `_`) followed by `*` (`team-a.*` allows `team-a.builds` and
/// every other topic that starts with `team-a.`). A lone `*` allows every topic.
///
/// A `*` anywhere else is refused: `deploys*` would also allow `deploys-admin`, which is
/// rarely what its author meant. Write `deploys.*` for the topics under `deploys`, and
/// name `deploys` itself if it is meant too.
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

    /// Whether `topic` matches one of the patterns. A pattern that breaks the rules
    /// ([`validate`](Self::validate)) matches nothing.
    pub fn allows(&self, topic: &str) -> bool {
        self.0.iter().any(|p| match Pattern::of(p) {
            Ok(Pattern::Any) => true,
            Ok(Pattern::Prefix(prefix)) => topic.starts_with(prefix),
            Ok(Pattern::Exact(name)) => name == topic,
            Err(_) => false,
        })
    }

    /// Checks every pattern (see the type's documentation).
    pub fn validate(&self) -> Result<(), String> {
        for p in &self.0 {
            Pattern::of(p).map_err(|e| format!("topic pattern {p:?}: {e}"))?;
        }
        Ok(())
    }
}

/// One pattern, read.
enum Pattern<'a> {
    /// `*`.
    Any,
    /// `team-a.*`: the prefix, separator included.
    Prefix(&'a str),
    /// A topic name.
    Exact(&'a str),
}

impl<'a> Pattern<'a> {
    fn of(pattern: &'a str) -> Result<Pattern<'a>, String> {
        if pattern == "*" {
            return Ok(Pattern::Any);
        }
        let Some(prefix) = pattern.strip_suffix('*') else {
            crate::validate_topic(pattern)?;
            return Ok(Pattern::Exact(pattern));
        };
        let Some(stem) = prefix.strip_suffix(['.', '-', '_']) else {
            return Err(format!(
                "a * must follow a separator (. - _) or stand alone: write {prefix}.* for the \
                 topics under {prefix} (and list {prefix} itself if it is meant too)"
            ));
        };
        crate::validate_topic(stem)?;
        Ok(Pattern::Prefix(prefix))
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
    fn a_star_follows_a_separator_or_stands_alone() {
        let p = TopicPatterns::new(vec!["deploys*".into()]);
        let refused = p.validate().expect_err("refused");
        assert!(refused.contains("deploys.*"), "{refused}");
        // Whoever builds patterns without validating them gets no prefix match either.
        assert!(!p.allows("deploys-admin"));
        assert!(!p.allows("deploys"));
        for ok in ["ci-*", "team_a_*", "a.b.*", "*"] {
            assert!(
                TopicPatterns::new(vec![ok.into()]).validate().is_ok(),
                "{ok}"
            );
        }
        for bad in [".*", "-*", "a*b", "a.**", "bad/x.*", "**"] {
            assert!(
                TopicPatterns::new(vec![bad.into()]).validate().is_err(),
                "{bad}"
            );
        }
        let ci = TopicPatterns::new(vec!["ci-*".into()]);
        assert!(ci.allows("ci-nightly"));
        assert!(!ci.allows("ci"));
    }

    #[test]
    fn validation_and_round_trip() {
        let p = TopicPatterns::new(vec!["ok".into(), "pre.*".into(), "*".into()]);
        assert!(p.validate().is_ok());
        assert!(TopicPatterns::new(vec!["bad/x".into()]).validate().is_err());
        let json = serde_json::to_string(&p).expect("ser");
        assert_eq!(json, r#"["ok","pre.*","*"]"#);
        let back: TopicPatterns = serde_json::from_str(&json).expect("de");
        assert_eq!(back, p);
    }
}
