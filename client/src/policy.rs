//! The notification policy: which notifications pop up, how loudly, and when a catch-up
//! becomes one summary instead of a flood. Pure functions of the settings and the time.

use crate::settings::Settings;
use belfry_protocol::{Notification, Priority};
use time::OffsetDateTime;

/// How a popup should behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Low urgency (shown briefly).
    Low,
    /// Normal.
    Normal,
    /// Critical: stays until dismissed.
    Critical,
}

impl Urgency {
    /// The urgency for a priority.
    pub fn of(priority: Priority) -> Self {
        match priority {
            Priority::Min | Priority::Low => Urgency::Low,
            Priority::Default | Priority::High => Urgency::Normal,
            Priority::Urgent => Urgency::Critical,
        }
    }
}

/// What to show for a group of newly received notifications.
#[derive(Debug, Clone, PartialEq)]
pub enum Popup {
    /// One native notification for this one.
    One(Box<Notification>),
    /// One summary for many (a catch-up after being away).
    Digest {
        /// How many arrived.
        count: usize,
        /// The highest urgency among those that would have popped up.
        urgency: Urgency,
    },
}

/// The current local time. (`time` refuses the local offset once the process has
/// threads; chrono reads the zone database instead, which is safe.)
pub fn now_local() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let offset = chrono::Local::now().offset().local_minus_utc();
    time::UtcOffset::from_whole_seconds(offset)
        .map(|o| now.to_offset(o))
        .unwrap_or(now)
}

/// Whether popups are held back at `now` (do-not-disturb or quiet hours).
pub fn quiet(settings: &Settings, now_local: OffsetDateTime) -> bool {
    if settings.dnd.is_on(now_local) {
        return true;
    }
    settings.quiet_hours.is_some_and(|q| {
        let minute = u16::from(now_local.hour()) * 60 + u16::from(now_local.minute());
        q.contains(minute)
    })
}

/// Whether one notification may pop up at `now`.
pub fn may_pop_up(settings: &Settings, n: &Notification, now_local: OffsetDateTime) -> bool {
    if n.read || n.priority < settings.popup_min_priority {
        return false;
    }
    if n.priority == Priority::Urgent && settings.urgent_breaks_through {
        return true;
    }
    !quiet(settings, now_local)
}

/// Decides the popups for newly received notifications. `catch_up` says they arrived in
/// one catch-up (not live): more than the digest threshold of those become one summary.
pub fn popups(
    settings: &Settings,
    received: &[Notification],
    catch_up: bool,
    now_local: OffsetDateTime,
) -> Vec<Popup> {
    let eligible: Vec<&Notification> = received
        .iter()
        .filter(|n| may_pop_up(settings, n, now_local))
        .collect();
    if catch_up && received.len() > settings.digest_threshold as usize && !eligible.is_empty() {
        let urgency = eligible
            .iter()
            .map(|n| Urgency::of(n.priority))
            .max_by_key(|u| match u {
                Urgency::Low => 0,
                Urgency::Normal => 1,
                Urgency::Critical => 2,
            })
            .unwrap_or(Urgency::Normal);
        return vec![Popup::Digest {
            count: received.len(),
            urgency,
        }];
    }
    eligible
        .into_iter()
        .map(|n| Popup::One(Box::new(n.clone())))
        .collect()
}

/// The summary line of a digest.
pub fn digest_title(count: usize) -> String {
    format!("{count} notifications while you were away")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Dnd, QuietHours};
    use time::macros::datetime;

    fn note(id: u64, priority: Priority) -> Notification {
        Notification {
            id,
            event: "notification".into(),
            title: format!("n{id}"),
            body: String::new(),
            priority,
            tags: vec![],
            url: None,
            actions: vec![],
            data: serde_json::Value::Null,
            topic: None,
            created_at: datetime!(2026-11-22 10:00 UTC),
            expires_at: datetime!(2026-11-29 10:00 UTC),
            read: false,
        }
    }

    const NOON: OffsetDateTime = datetime!(2026-11-22 12:00 UTC);

    #[test]
    fn low_priorities_never_pop_up_by_default() {
        let s = Settings::default();
        assert!(!may_pop_up(&s, &note(1, Priority::Min), NOON));
        assert!(!may_pop_up(&s, &note(1, Priority::Low), NOON));
        assert!(may_pop_up(&s, &note(1, Priority::Default), NOON));
        let strict = Settings {
            popup_min_priority: Priority::High,
            ..s
        };
        assert!(!may_pop_up(&strict, &note(1, Priority::Default), NOON));
        let mut read = note(1, Priority::Urgent);
        read.read = true;
        assert!(!may_pop_up(&Settings::default(), &read, NOON));
    }

    #[test]
    fn dnd_and_quiet_hours_hold_back_all_but_urgent() {
        let dnd = Settings {
            dnd: Dnd::Always,
            ..Settings::default()
        };
        assert!(!may_pop_up(&dnd, &note(1, Priority::High), NOON));
        assert!(may_pop_up(&dnd, &note(1, Priority::Urgent), NOON));
        let strict = Settings {
            urgent_breaks_through: false,
            ..dnd
        };
        assert!(!may_pop_up(&strict, &note(1, Priority::Urgent), NOON));

        let hour = Settings {
            dnd: Dnd::Until {
                until: NOON + time::Duration::HOUR,
            },
            ..Settings::default()
        };
        assert!(!may_pop_up(&hour, &note(1, Priority::High), NOON));
        assert!(may_pop_up(
            &hour,
            &note(1, Priority::High),
            NOON + time::Duration::HOUR
        ));

        let lunch = Settings {
            quiet_hours: Some(QuietHours {
                start_minute: 11 * 60,
                end_minute: 13 * 60,
            }),
            ..Settings::default()
        };
        assert!(quiet(&lunch, NOON));
        assert!(!may_pop_up(&lunch, &note(1, Priority::Default), NOON));
        assert!(may_pop_up(
            &lunch,
            &note(1, Priority::Default),
            datetime!(2026-11-22 14:00 UTC)
        ));
    }

    #[test]
    fn big_catch_ups_become_one_digest() {
        let s = Settings::default();
        let many: Vec<_> = (1..=12).map(|i| note(i, Priority::Default)).collect();
        assert_eq!(
            popups(&s, &many, true, NOON),
            vec![Popup::Digest {
                count: 12,
                urgency: Urgency::Normal
            }]
        );
        // Live arrivals are never folded.
        assert_eq!(popups(&s, &many, false, NOON).len(), 12);
        // At the threshold, each pops up.
        assert_eq!(popups(&s, &many[..3], true, NOON).len(), 3);
        // A digest's urgency is the highest among those that would pop up.
        let mut mixed = many.clone();
        mixed.push(note(13, Priority::Urgent));
        assert!(matches!(
            popups(&s, &mixed, true, NOON)[0],
            Popup::Digest {
                count: 13,
                urgency: Urgency::Critical
            }
        ));
        // Nothing eligible (all low): no digest either.
        let quiet_ones: Vec<_> = (1..=5).map(|i| note(i, Priority::Low)).collect();
        assert!(popups(&s, &quiet_ones, true, NOON).is_empty());
        assert_eq!(digest_title(12), "12 notifications while you were away");
    }
}
