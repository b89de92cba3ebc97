//! When a breaker opens, how long it stays open and how it probes.

use std::time::Duration;

/// Over which calls the failure rate is measured while the breaker is
/// closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerWindow {
    /// The last this many calls (at least 1).
    Calls(u32),
    /// The calls of the last this long, forgotten a tenth of it at a time.
    Time(Duration),
}

/// The settings of a [`CircuitBreaker`](super::CircuitBreaker); the
/// defaults are resilience4j's: the last 100 calls, at least 100 of them,
/// 50 % failures, open for 60 s, 10 probes.
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::{BreakerConfig, BreakerWindow};
///
/// let config = BreakerConfig::default()
///     .window(BreakerWindow::Time(Duration::from_secs(30)))
///     .minimum_calls(20)
///     .failure_rate(0.5)
///     .open_for(Duration::from_secs(15))
///     .half_open_probes(3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    pub(super) window: BreakerWindow,
    pub(super) minimum_calls: u32,
    pub(super) failure_rate: f64,
    pub(super) open_duration: Duration,
    pub(super) half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: BreakerWindow::Calls(100),
            minimum_calls: 100,
            failure_rate: 0.5,
            open_duration: Duration::from_secs(60),
            half_open_probes: 10,
        }
    }
}

impl BreakerConfig {
    /// The calls the failure rate is measured over.
    pub fn window(mut self, window: BreakerWindow) -> Self {
        self.window = match window {
            BreakerWindow::Calls(calls) => BreakerWindow::Calls(calls.max(1)),
            BreakerWindow::Time(span) => BreakerWindow::Time(span),
        };
        self
    }

    /// Calls the window must hold before the rate counts (at least 1): a
    /// first failure alone does not open the breaker.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls.max(1);
        self
    }

    /// The share of failed calls (0 to 1, clamped) at which it opens.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = if rate.is_nan() {
            1.0
        } else {
            rate.clamp(f64::MIN_POSITIVE, 1.0)
        };
        self
    }

    /// How long it stays open before probing.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Calls let through at once while half-open (at least 1); this many
    /// successes close the breaker, one failure opens it again.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.max(1);
        self
    }
}
