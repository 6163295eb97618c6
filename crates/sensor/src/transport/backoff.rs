//! Jittered exponential back-off between connection attempts.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// Returns the delay before the next attempt: the doubled delay capped
    /// at the maximum, then a random point in its upper half, so sensors
    /// cut off together do not reconnect together.
    pub fn next_delay(&mut self) -> Duration {
        let doubled = self.initial.saturating_mul(1u32 << self.failures.min(16));
        let ceiling = doubled.min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_up_to_max_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let delay = backoff.next_delay();
            ceilings.push(delay);
        }
        assert!(
            ceilings[0] >= Duration::from_millis(50) && ceilings[0] <= Duration::from_millis(100)
        );
        assert!(
            ceilings[3] >= Duration::from_millis(400) && ceilings[3] <= Duration::from_millis(800)
        );
        for delay in &ceilings[5..] {
            assert!(
                *delay >= Duration::from_secs(1) && *delay <= Duration::from_secs(2),
                "{delay:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
