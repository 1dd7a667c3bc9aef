//! The one backoff policy of the SDK: exponential, capped, optionally
//! jittered. Used for nack delays, reconnection loops, publish retries and
//! held archive batches alike.

use std::time::Duration;

/// Exponential backoff: `base` before the second try, doubling, at most
/// `max`. With jitter, each delay is drawn from its upper half, so
/// processes that failed together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use pipeline_core::Backoff;
/// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(b.delay(1), Duration::from_millis(100));
/// assert_eq!(b.delay(3), Duration::from_millis(400));
/// assert_eq!(b.delay(10), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Draw each delay at random from `[d/2, d]`.
    pub jitter: bool,
}

impl Default for Backoff {
    /// 500 ms, doubling, at most 30 s, no jitter: the retry schedule of
    /// failed jobs.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// `base` doubling up to `max`, without jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: false,
        }
    }

    /// The same schedule with jitter.
    pub const fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Delay after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        let full = self.base.saturating_mul(factor).min(self.max);
        if self.jitter && !full.is_zero() {
            let half = full / 2;
            let spread = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
            half + Duration::from_micros(fastrand::u64(0..=spread))
        } else {
            full
        }
    }

    /// A fresh sequence of delays following this policy.
    pub fn start(&self) -> Retrying {
        Retrying {
            policy: *self,
            failures: 0,
        }
    }
}

/// A running sequence of backoff delays: one per failure, reset after a
/// success.
#[derive(Debug, Clone)]
pub struct Retrying {
    policy: Backoff,
    failures: u32,
}

impl Retrying {
    /// Record a failure and return how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// Record a failure and wait before the next try.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failures recorded since the start or the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Start again from the base delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let p = Backoff::default();
        assert_eq!(p.delay(1), Duration::from_millis(500));
        assert_eq!(p.delay(2), Duration::from_secs(1));
        assert_eq!(p.delay(40), Duration::from_secs(30));
        assert_eq!(p.delay(0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_jitter();
        for attempt in 1..8 {
            let full = Backoff::new(p.base, p.max).delay(attempt);
            for _ in 0..50 {
                let d = p.delay(attempt);
                assert!(d >= full / 2 && d <= full, "{d:?} for {full:?}");
            }
        }
    }

    #[test]
    fn a_sequence_grows_and_resets() {
        let mut r = Backoff::new(Duration::from_millis(10), Duration::from_millis(40)).start();
        let got: Vec<u64> = (0..4).map(|_| r.next_delay().as_millis() as u64).collect();
        assert_eq!(got, vec![10, 20, 40, 40]);
        assert_eq!(r.failures(), 4);
        r.reset();
        assert_eq!(r.next_delay(), Duration::from_millis(10));
    }
}
