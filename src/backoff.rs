//! One backoff schedule for every retry: the publisher's attempts, the
//! consumer's Nak delays, and the runtime's own recovery.

use std::time::Duration;

/// Delays that grow by a factor from an initial delay up to a cap, each
/// optionally shortened by a random share (jitter).
///
/// The delay after attempt `n` (1-based) is `initial * multiplier^(n-1)`,
/// capped at `max`, then reduced by a random share of at most `jitter`, so
/// clients that failed together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use jetevents::backoff::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(backoff.delay(1), Duration::from_millis(100));
/// assert_eq!(backoff.delay(2), Duration::from_millis(200));
/// assert_eq!(backoff.delay(10), Duration::from_secs(1));
///
/// let jittered = backoff.jitter(0.5);
/// assert!(jittered.delay(2) >= Duration::from_millis(100));
/// assert!(jittered.delay(2) <= Duration::from_millis(200));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

impl Backoff {
    /// Doubling delays from `initial`, capped at `max`, without jitter. A
    /// `max` below `initial` caps every delay, the first included.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2.0,
            jitter: 0.0,
        }
    }

    /// The same delay every time, without jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let backoff = jetevents::backoff::Backoff::fixed(Duration::from_secs(3));
    /// assert_eq!(backoff.delay(1), backoff.delay(4));
    /// ```
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            initial: delay,
            max: delay,
            multiplier: 1.0,
            jitter: 0.0,
        }
    }

    /// Growth factor between consecutive delays (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Share of each delay (0.0 to 1.0) that may be randomly taken off it.
    /// `0.0` makes the schedule deterministic; `1.0` is "full jitter".
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The first delay, without jitter.
    pub fn initial_delay(&self) -> Duration {
        self.initial
    }

    /// The cap of every delay.
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The delay after attempt `attempt` (1-based) failed, without jitter:
    /// the upper bound of [`delay`](Self::delay).
    pub fn base_delay(&self, attempt: u64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(i32::MAX as u64) as i32;
        let factor = self.multiplier.powi(exponent);
        let seconds = self.initial.as_secs_f64() * factor;
        if !seconds.is_finite() || seconds >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after attempt `attempt` (1-based) failed:
    /// [`base_delay`](Self::base_delay) minus a random share of at most the
    /// jitter.
    pub fn delay(&self, attempt: u64) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter <= 0.0 {
            return base;
        }
        let cut = self.jitter * fastrand::f64();
        scale(base, 1.0 - cut)
    }

    /// The shortest delay [`delay`](Self::delay) can return for `attempt`.
    pub fn min_delay(&self, attempt: u64) -> Duration {
        scale(self.base_delay(attempt), 1.0 - self.jitter)
    }
}

/// `duration * factor` for a factor in `0.0..=1.0`, without the panic of
/// `Duration::mul_f64` when rounding pushes a huge duration past the maximum.
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor)
        .unwrap_or(duration)
        .min(duration)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(100));
        let delays: Vec<_> = (1..=6).map(|attempt| backoff.delay(attempt)).collect();
        assert_eq!(
            delays,
            [10, 20, 40, 80, 100, 100]
                .map(Duration::from_millis)
                .to_vec()
        );
    }

    #[test]
    fn jitter_only_shortens_within_bounds() {
        let backoff =
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10)).jitter(0.25);
        let mut seen_shorter = false;
        for _ in 0..1000 {
            let delay = backoff.delay(2);
            assert!(delay <= Duration::from_secs(2), "{delay:?}");
            assert!(delay >= Duration::from_millis(1500), "{delay:?}");
            assert!(delay >= backoff.min_delay(2));
            seen_shorter |= delay < Duration::from_secs(2);
        }
        assert!(seen_shorter, "jitter never applied");
    }

    #[test]
    fn extreme_attempts_do_not_overflow() {
        let backoff =
            Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)).multiplier(10.0);
        assert_eq!(backoff.base_delay(u64::MAX), Duration::from_secs(60));
        assert_eq!(backoff.base_delay(0), Duration::from_secs(1));
        let huge = Backoff::exponential(Duration::MAX, Duration::MAX).jitter(0.2);
        assert_eq!(huge.base_delay(3), Duration::MAX);
        assert!(huge.delay(3) <= Duration::MAX);
        assert!(huge.min_delay(3) <= Duration::MAX);
    }

    #[test]
    fn a_cap_below_the_initial_delay_caps_every_delay() {
        let backoff = Backoff::exponential(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(backoff.delay(1), Duration::from_secs(1));
        assert_eq!(backoff.delay(5), Duration::from_secs(1));
    }

    #[test]
    fn settings_are_clamped() {
        let backoff = Backoff::fixed(Duration::from_secs(1))
            .jitter(f64::NAN)
            .multiplier(0.5);
        assert_eq!(backoff.delay(3), Duration::from_secs(1));
        assert_eq!(
            Backoff::fixed(Duration::from_secs(1))
                .jitter(7.0)
                .min_delay(1),
            Duration::ZERO
        );
    }
}
