//! Reconnect delays: exponential, with jitter (backon), so a hub restart does not bring
//! every client back in the same second.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th delay is drawn from `[cap/2, cap]`
/// where `cap = min(max, min * 2^n)`. (backon adds up to the current delay again as
/// jitter, so it runs on half the caps.)
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    min: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    /// Delays from about `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(2));
        let max = max.max(min);
        let builder = ExponentialBuilder::new()
            .with_min_delay(min / 2)
            .with_max_delay(max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
            min,
            max,
            attempts: 0,
        }
    }

    /// The cap of the next delay (before jitter).
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call doubles the cap until `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        // Never exhausted (no maximum number of attempts).
        self.delays.next().unwrap_or(self.max)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the shortest delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_spread() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut caps = Vec::new();
        for _ in 0..12 {
            let cap = b.cap();
            let d = b.next_delay();
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
            caps.push(cap);
        }
        assert_eq!(caps[0], Duration::from_millis(500));
        assert_eq!(caps[1], Duration::from_secs(1));
        assert_eq!(caps[5], Duration::from_secs(16));
        assert!(caps[6..].iter().all(|c| *c == Duration::from_secs(30)));
        b.reset();
        assert_eq!(b.cap(), Duration::from_millis(500));
        assert_eq!(b.attempts(), 0);

        // Many clients restarting together spread over the window instead of one instant.
        let firsts: std::collections::BTreeSet<u128> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
                b.next_delay().as_millis()
            })
            .collect();
        assert!(firsts.len() > 150, "only {} distinct delays", firsts.len());
        assert!(firsts.iter().all(|ms| (1000..=2000).contains(ms)));
    }
}
