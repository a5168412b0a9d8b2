//! Reconnect delays: exponential growth with jitter, so that a fleet that lost its control plane
//! does not reconnect in lockstep when it returns.

use std::time::Duration;

use rand::Rng;

/// First delay after a failure.
pub const DEFAULT_BASE: Duration = Duration::from_millis(250);
/// Longest delay.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with "equal jitter": the n-th delay is uniformly drawn from
/// `[d/2, d]` where `d = min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DEFAULT_BASE, DEFAULT_MAX)
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rng.random::<f64>())
    }

    /// After a successful connection: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_exponentially_within_jitter_bounds_up_to_max() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..10u32 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(n)).min(Duration::from_secs(2));
            let d = b.next_delay(&mut rng);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {n}: {d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
                b.next_delay(&mut rng).as_millis()
            })
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }
}
