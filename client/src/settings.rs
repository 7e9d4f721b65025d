//! What the person chose: the hub to connect to, the token, and when to interrupt them.

use belfry_protocol::Priority;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Do-not-disturb state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Dnd {
    /// Popups as usual.
    #[default]
    Off,
    /// Quiet until this moment (for one hour, until tomorrow).
    Until {
        /// When it ends.
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
    },
    /// Quiet until turned off.
    Always,
}

impl Dnd {
    /// Whether do-not-disturb is on at `now`.
    pub fn is_on(&self, now: OffsetDateTime) -> bool {
        match self {
            Dnd::Off => false,
            Dnd::Until { until } => now < *until,
            Dnd::Always => true,
        }
    }
}

/// Daily quiet hours, local time, `start` to `end` (crossing midnight when `end < start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    /// Minutes after local midnight when quiet starts.
    pub start_minute: u16,
    /// Minutes after local midnight when quiet ends.
    pub end_minute: u16,
}

impl QuietHours {
    /// Whether a local time of day (minutes after midnight) is inside the quiet hours.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        let (s, e, m) = (self.start_minute, self.end_minute, minute_of_day);
        if s == e {
            false
        } else if s < e {
            s <= m && m < e
        } else {
            m >= s || m < e
        }
    }
}

/// Everything the person can set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The hub's base URL, e.g. `http://127.0.0.1:8080`.
    pub server_url: String,
    /// The user token (pasted, or from `--token` / `BELFRY_TOKEN`).
    pub token: String,
    /// Lowest priority that pops up; below it, history only.
    pub popup_min_priority: Priority,
    /// More than this many in one catch-up become one summary notification.
    pub digest_threshold: u32,
    /// Do-not-disturb.
    pub dnd: Dnd,
    /// Whether urgent notifications pop up during do-not-disturb and quiet hours.
    pub urgent_breaks_through: bool,
    /// Optional daily quiet hours.
    pub quiet_hours: Option<QuietHours>,
    /// Start hidden in the tray at login.
    pub start_at_login: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server_url: "http://127.0.0.1:8080".into(),
            token: String::new(),
            popup_min_priority: Priority::Default,
            digest_threshold: 3,
            dnd: Dnd::Off,
            urgent_breaks_through: true,
            quiet_hours: None,
            start_at_login: false,
        }
    }
}

impl Settings {
    /// Checks what a person could have typed wrong.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.server_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err("the server URL must start with http:// or https://".into());
        }
        if let Some(q) = self.quiet_hours
            && (q.start_minute >= 24 * 60 || q.end_minute >= 24 * 60)
        {
            return Err("quiet hours must be times of day".into());
        }
        if self.digest_threshold == 0 {
            return Err("the digest threshold must be at least 1".into());
        }
        Ok(())
    }

    /// Whether the connection needs to be remade after a change from `old` to `self`.
    pub fn connection_changed(&self, old: &Settings) -> bool {
        self.server_url.trim() != old.server_url.trim() || self.token.trim() != old.token.trim()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_hours_handle_midnight() {
        let night = QuietHours {
            start_minute: 22 * 60,
            end_minute: 7 * 60,
        };
        assert!(night.contains(23 * 60));
        assert!(night.contains(0));
        assert!(night.contains(6 * 60 + 59));
        assert!(!night.contains(7 * 60));
        assert!(!night.contains(12 * 60));
        let lunch = QuietHours {
            start_minute: 12 * 60,
            end_minute: 13 * 60,
        };
        assert!(lunch.contains(12 * 60 + 30));
        assert!(!lunch.contains(13 * 60));
        assert!(
            !QuietHours {
                start_minute: 5,
                end_minute: 5
            }
            .contains(5)
        );
    }

    #[test]
    fn dnd_modes() {
        let now = time::macros::datetime!(2026-11-22 10:00 UTC);
        assert!(!Dnd::Off.is_on(now));
        assert!(Dnd::Always.is_on(now));
        assert!(
            Dnd::Until {
                until: now + time::Duration::HOUR
            }
            .is_on(now)
        );
        assert!(!Dnd::Until { until: now }.is_on(now));
    }

    #[test]
    fn settings_round_trip_and_fill_defaults() {
        let s = Settings {
            dnd: Dnd::Until {
                until: time::macros::datetime!(2026-11-22 11:00 UTC),
            },
            quiet_hours: Some(QuietHours {
                start_minute: 1320,
                end_minute: 420,
            }),
            ..Settings::default()
        };
        let json = serde_json::to_string(&s).expect("ser");
        assert_eq!(serde_json::from_str::<Settings>(&json).expect("de"), s);
        let partial: Settings = serde_json::from_str(r#"{"token": "t"}"#).expect("de");
        assert_eq!(partial.digest_threshold, 3);
        assert_eq!(partial.token, "t");
        assert!(
            Settings {
                server_url: "ftp://x".into(),
                ..Settings::default()
            }
            .validate()
            .is_err()
        );
    }
}
