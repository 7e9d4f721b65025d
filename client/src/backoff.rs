//! Reconnect delays: exponential, with jitter, so a hub restart does not bring every
//! client back in the same second.

use rand::Rng;
use std::time::Duration;

/// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from
/// `[cap/2, cap]` where `cap = min(max, min * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays from about `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The cap of the next delay (before jitter).
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay; each call doubles the cap until `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let jitter_ms = rng.gen_range(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        half + Duration::from_millis(jitter_ms)
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the shortest delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_stay_bounded_and_spread() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut caps = Vec::new();
        for _ in 0..12 {
            let cap = b.cap();
            let d = b.next_delay(&mut rng);
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

        // Many clients restarting together spread over the window instead of one instant.
        let firsts: std::collections::BTreeSet<u128> = (0..200)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
                b.next_delay(&mut rng).as_millis()
            })
            .collect();
        assert!(firsts.len() > 150, "only {} distinct delays", firsts.len());
        assert!(firsts.iter().all(|ms| (1000..=2000).contains(ms)));
    }
}
