//! Exponential backoff with full jitter.
//!
//! The delay before retry `n` (from 1) is uniform in `[0, min(cap, base * 2^(n-1))]`, which
//! spreads retries of many clients over time instead of synchronising them.

use std::time::Duration;

use rand::Rng;

/// A backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Upper bound of every delay.
    pub cap: Duration,
}

impl Backoff {
    /// A policy with the given base and cap.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The largest delay retry `attempt` (from 1) may wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2_u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random delay for retry `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_until_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(100), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(50));
        for attempt in 1..20 {
            assert!(b.delay(attempt) <= b.ceiling(attempt));
        }
    }
}
