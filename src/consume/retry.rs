//! The retry policy: how many attempts an event gets and how long to wait
//! between them.
//!
//! Retries never happen inside the consumer: a transient failure is answered
//! with a Nak that carries the delay, and the server redelivers the event when
//! it is due. Meanwhile the consumer keeps handling other events, so one failing
//! event cannot block a partition or hot-loop (a lesson from watermill's
//! in-process retry middleware).

use std::time::Duration;

use crate::backoff::Backoff;

/// Attempts and backoff for events whose handler fails transiently.
///
/// The delay before attempt `n + 1` (after attempt `n` failed) is
/// `initial_delay * multiplier^(n-1)`, capped at `max_delay`, then reduced by a
/// random share of at most `jitter` (so instances that failed together do not
/// retry together). An attempt is a handler run that failed, counted across
/// instances in a KV bucket ([`ATTEMPTS_BUCKET`](super::ATTEMPTS_BUCKET)),
/// so the schedule survives restarts and moves between instances with the
/// event, and deliveries that ran no handler (a shutdown, a lost connection,
/// an event left for another version) use up no attempt.
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
///     .max_attempts(4)
///     .jitter(0.0);
/// assert_eq!(policy.delay(1), Duration::from_millis(100));
/// assert_eq!(policy.delay(2), Duration::from_millis(200));
/// assert_eq!(policy.delay(3), Duration::from_millis(400));
/// assert_eq!(policy.delay(10), Duration::from_secs(1));
/// assert!(!policy.is_last_attempt(3));
/// assert!(policy.is_last_attempt(4));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl Default for RetryPolicy {
    /// Five attempts, delays 1 s, 2 s, 4 s, 8 s (each up to 20 % shorter),
    /// capped at one minute.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
                .jitter(DEFAULT_JITTER),
        }
    }
}

/// The share of a delay the default policies may take off it.
const DEFAULT_JITTER: f64 = 0.2;

impl RetryPolicy {
    /// Exponential backoff (factor 2) from `initial_delay` up to `max_delay`,
    /// with the default attempts (5) and jitter (20 %).
    pub fn exponential(initial_delay: Duration, max_delay: Duration) -> Self {
        Self::default().with_backoff(
            Backoff::exponential(initial_delay, max_delay.max(initial_delay))
                .jitter(DEFAULT_JITTER),
        )
    }

    /// The same delay before every retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = jetevents::consume::RetryPolicy::fixed(Duration::from_secs(3)).jitter(0.0);
    /// assert_eq!(policy.delay(1), policy.delay(4));
    /// ```
    pub fn fixed(delay: Duration) -> Self {
        Self::default().with_backoff(Backoff::fixed(delay).jitter(DEFAULT_JITTER))
    }

    /// No retries: the first failure of any kind dead-letters the event.
    ///
    /// ```
    /// assert!(jetevents::consume::RetryPolicy::no_retry().is_last_attempt(1));
    /// ```
    pub fn no_retry() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Replaces the schedule of delays, keeping the attempts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jetevents::backoff::Backoff;
    /// use jetevents::consume::RetryPolicy;
    ///
    /// let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30));
    /// let policy = RetryPolicy::default().with_backoff(backoff).max_attempts(8);
    /// assert_eq!(policy.backoff(), backoff);
    /// ```
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Attempts in all, the first included (at least 1). After the last one
    /// fails the event goes to the dead-letter stream.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Growth factor between consecutive delays (at least 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff = self.backoff.multiplier(multiplier);
        self
    }

    /// Share of each delay (0.0 to 1.0) that may be randomly taken off it.
    /// `0.0` makes the schedule deterministic; `1.0` is "full jitter".
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// The schedule of delays between attempts.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Attempts in all, the first included.
    pub fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the first retry, without jitter.
    pub fn initial_delay(&self) -> Duration {
        self.backoff.initial_delay()
    }

    /// The cap of every delay.
    pub fn max_delay(&self) -> Duration {
        self.backoff.max_delay()
    }

    /// Whether attempt number `attempt` (1 = the first handler run) is the
    /// last this policy allows.
    pub fn is_last_attempt(&self, attempt: u64) -> bool {
        attempt >= u64::from(self.max_attempts)
    }

    /// The delay, without jitter, before the next attempt after attempt
    /// `attempt` (1-based) failed. The upper bound of [`delay`](Self::delay).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = jetevents::consume::RetryPolicy::default();
    /// assert_eq!(policy.base_delay(1), Duration::from_secs(1));
    /// assert_eq!(policy.base_delay(3), Duration::from_secs(4));
    /// assert_eq!(policy.base_delay(100), Duration::from_secs(60));
    /// ```
    pub fn base_delay(&self, attempt: u64) -> Duration {
        self.backoff.base_delay(attempt)
    }

    /// The delay before the next attempt after attempt `attempt` (1-based)
    /// failed: [`base_delay`](Self::base_delay) minus a random share of at
    /// most `jitter`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = jetevents::consume::RetryPolicy::default().jitter(0.5);
    /// let delay = policy.delay(2);
    /// assert!(delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2));
    /// ```
    pub fn delay(&self, attempt: u64) -> Duration {
        self.backoff.delay(attempt)
    }

    /// The shortest delay [`delay`](Self::delay) can return for `attempt`.
    pub fn min_delay(&self, attempt: u64) -> Duration {
        self.backoff.min_delay(attempt)
    }

    /// The server-side backoff derived from this policy for a consumer with
    /// ack wait `ack_wait`: one entry per attempt, each the ack wait plus that
    /// attempt's base delay.
    ///
    /// The server uses it only when an instance stops answering (crash, lost
    /// connection) and the ack wait expires: the event then comes back after
    /// about the delay a Nak would have asked for. Every entry is at least the
    /// ack wait, so the in-progress acks sent every third of the ack wait keep
    /// long handlers alive on every delivery.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = jetevents::consume::RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(3);
    /// assert_eq!(
    ///     policy.server_backoff(Duration::from_secs(30)),
    ///     vec![Duration::from_secs(31); 3]
    /// );
    /// ```
    pub fn server_backoff(&self, ack_wait: Duration) -> Vec<Duration> {
        (1..=u64::from(self.max_attempts))
            .map(|attempt| ack_wait.saturating_add(self.base_delay(attempt)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn settings_are_clamped() {
        let policy = RetryPolicy::default()
            .max_attempts(0)
            .jitter(f64::NAN)
            .multiplier(0.5);
        assert_eq!(policy.attempts(), 1);
        assert!(policy.is_last_attempt(1));
        assert_eq!(policy.delay(3), policy.base_delay(3));
        assert_eq!(policy.base_delay(3), Duration::from_secs(1));
        assert_eq!(
            RetryPolicy::default().jitter(7.0).min_delay(1),
            Duration::ZERO
        );
    }

    #[test]
    fn last_attempt_follows_max_attempts() {
        let policy = RetryPolicy::default().max_attempts(3);
        assert!(!policy.is_last_attempt(1));
        assert!(!policy.is_last_attempt(2));
        assert!(policy.is_last_attempt(3));
        assert!(policy.is_last_attempt(4));
    }
}
