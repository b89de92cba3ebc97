//! The breaker's state machine, on instants the caller passes in (so its
//! unit tests need no clock): closed with a failure window, open until a
//! time, half-open with a few probes.
//!
//! As resilience4j's and failsafe's: closed records every result in a
//! window; when the window holds at least the minimum calls and the failure
//! rate reaches the threshold it opens; once the open duration is over the
//! next calls are probes, at most `half_open_probes` at once; one failed
//! probe opens it again, that many successful ones close it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{BreakerConfig, BreakerWindow};
use super::BreakerState;

/// Buckets a time window is cut into: old results leave it a tenth of the
/// window at a time.
const TIME_BUCKETS: u32 = 10;

pub(super) struct Machine {
    config: BreakerConfig,
    phase: Phase,
    window: Window,
    /// Bumped at each transition: a result from a call admitted in an
    /// earlier phase no longer counts.
    epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// What a call may do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Admitted(Ticket),
    /// Open: come back at this instant.
    WaitUntil(Instant),
    /// Half-open with every probe taken: wait for a transition.
    WaitForProbes,
}

/// A call let through: in which phase, so its result lands in the right one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ticket {
    pub(super) probe: bool,
    epoch: u64,
}

/// How a call ended, as the breaker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CallResult {
    Success,
    Failure,
    /// Neither (a dead letter, a cancelled call): a probe slot is freed.
    Ignored,
}

impl Machine {
    pub(super) fn new(config: BreakerConfig) -> Self {
        Self {
            window: Window::new(config.window),
            config,
            phase: Phase::Closed,
            epoch: 0,
        }
    }

    pub(super) fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether calls are refused at `now`: open and not yet due for probes.
    pub(super) fn refuses(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Open { until } if now < until)
    }

    /// Lets a call through or says how long to wait; the transition to
    /// half-open, when this call makes it, comes back too.
    pub(super) fn admit(&mut self, now: Instant) -> (Admission, Option<BreakerState>) {
        let mut transition = None;
        if let Phase::Open { until } = self.phase {
            if now < until {
                return (Admission::WaitUntil(until), None);
            }
            transition = Some(self.enter(Phase::HalfOpen {
                admitted: 0,
                succeeded: 0,
            }));
        }
        let admission = match &mut self.phase {
            Phase::Closed => Admission::Admitted(Ticket {
                probe: false,
                epoch: self.epoch,
            }),
            Phase::HalfOpen { admitted, .. } if *admitted < self.config.half_open_probes => {
                *admitted += 1;
                Admission::Admitted(Ticket {
                    probe: true,
                    epoch: self.epoch,
                })
            }
            Phase::HalfOpen { .. } => Admission::WaitForProbes,
            Phase::Open { until } => Admission::WaitUntil(*until),
        };
        (admission, transition)
    }

    /// Counts the result of an admitted call; the transition it causes, if
    /// any.
    pub(super) fn record(
        &mut self,
        ticket: Ticket,
        result: CallResult,
        now: Instant,
    ) -> Option<BreakerState> {
        if ticket.epoch != self.epoch {
            return None;
        }
        match (&mut self.phase, result) {
            (Phase::Closed, CallResult::Ignored) => None,
            (Phase::Closed, result) => {
                self.window.push(result == CallResult::Failure, now);
                let (calls, failures) = self.window.totals(now);
                let tripped = calls >= self.config.minimum_calls
                    && f64::from(failures) >= self.config.failure_rate * f64::from(calls);
                tripped.then(|| self.open(now))
            }
            (Phase::HalfOpen { .. }, CallResult::Failure) => Some(self.open(now)),
            (Phase::HalfOpen { admitted, .. }, CallResult::Ignored) => {
                *admitted = admitted.saturating_sub(1);
                None
            }
            (Phase::HalfOpen { succeeded, .. }, CallResult::Success) => {
                *succeeded += 1;
                (*succeeded >= self.config.half_open_probes).then(|| {
                    self.window.clear();
                    self.enter(Phase::Closed)
                })
            }
            (Phase::Open { .. }, _) => None,
        }
    }

    fn open(&mut self, now: Instant) -> BreakerState {
        self.enter(Phase::Open {
            until: now + self.config.open_duration,
        })
    }

    fn enter(&mut self, phase: Phase) -> BreakerState {
        self.phase = phase;
        self.epoch += 1;
        self.state()
    }
}

/// The results of the closed phase's recent calls.
enum Window {
    Count {
        size: u32,
        failed: VecDeque<bool>,
    },
    Time {
        span: Duration,
        bucket: Duration,
        buckets: VecDeque<Bucket>,
    },
}

struct Bucket {
    start: Instant,
    calls: u32,
    failures: u32,
}

impl Window {
    fn new(window: BreakerWindow) -> Self {
        match window {
            BreakerWindow::Calls(size) => Self::Count {
                size,
                failed: VecDeque::with_capacity(size as usize),
            },
            BreakerWindow::Time(span) => Self::Time {
                span,
                bucket: (span / TIME_BUCKETS).max(Duration::from_millis(1)),
                buckets: VecDeque::new(),
            },
        }
    }

    fn push(&mut self, failed: bool, now: Instant) {
        match self {
            Self::Count { size, failed: all } => {
                if all.len() >= *size as usize {
                    all.pop_front();
                }
                all.push_back(failed);
            }
            Self::Time {
                bucket, buckets, ..
            } => {
                let current = buckets.back_mut().filter(|last| now < last.start + *bucket);
                let current = match current {
                    Some(current) => current,
                    None => {
                        buckets.push_back(Bucket {
                            start: now,
                            calls: 0,
                            failures: 0,
                        });
                        // Just pushed: never empty here.
                        let Some(last) = buckets.back_mut() else {
                            return;
                        };
                        last
                    }
                };
                current.calls += 1;
                current.failures += u32::from(failed);
            }
        }
    }

    /// (calls, failures) in the window at `now`.
    fn totals(&mut self, now: Instant) -> (u32, u32) {
        match self {
            Self::Count { failed, .. } => (
                failed.len() as u32,
                failed.iter().filter(|failed| **failed).count() as u32,
            ),
            Self::Time { span, buckets, .. } => {
                while buckets
                    .front()
                    .is_some_and(|oldest| oldest.start + *span <= now)
                {
                    buckets.pop_front();
                }
                buckets.iter().fold((0, 0), |(calls, failures), bucket| {
                    (calls + bucket.calls, failures + bucket.failures)
                })
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Self::Count { failed, .. } => failed.clear(),
            Self::Time { buckets, .. } => buckets.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn config(window: BreakerWindow) -> BreakerConfig {
        BreakerConfig::default()
            .window(window)
            .minimum_calls(4)
            .failure_rate(0.5)
            .open_for(Duration::from_secs(10))
            .half_open_probes(2)
    }

    fn admitted(machine: &mut Machine, now: Instant) -> Ticket {
        match machine.admit(now).0 {
            Admission::Admitted(ticket) => ticket,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn opens_at_the_failure_rate_once_the_window_has_the_minimum_calls() {
        let mut machine = Machine::new(config(BreakerWindow::Calls(10)));
        let now = Instant::now();
        for result in [
            CallResult::Failure,
            CallResult::Failure,
            CallResult::Success,
        ] {
            let ticket = admitted(&mut machine, now);
            assert_eq!(machine.record(ticket, result, now), None);
        }
        let ticket = admitted(&mut machine, now);
        assert_eq!(
            machine.record(ticket, CallResult::Success, now),
            Some(BreakerState::Open)
        );
        assert!(machine.refuses(now));
        assert_eq!(
            machine.admit(now).0,
            Admission::WaitUntil(now + Duration::from_secs(10))
        );
    }

    #[test]
    fn half_open_admits_the_probes_and_closes_after_them() {
        let mut machine = Machine::new(config(BreakerWindow::Calls(4)));
        let now = Instant::now();
        for _ in 0..4 {
            let ticket = admitted(&mut machine, now);
            machine.record(ticket, CallResult::Failure, now);
        }
        let later = now + Duration::from_secs(10);
        assert!(!machine.refuses(later));
        let (first, transition) = machine.admit(later);
        assert_eq!(transition, Some(BreakerState::HalfOpen));
        let Admission::Admitted(first) = first else {
            panic!("first probe refused")
        };
        let second = admitted(&mut machine, later);
        assert!(first.probe && second.probe);
        assert_eq!(machine.admit(later).0, Admission::WaitForProbes);
        assert_eq!(machine.record(first, CallResult::Success, later), None);
        assert_eq!(
            machine.record(second, CallResult::Success, later),
            Some(BreakerState::Closed)
        );
        // The window starts empty again.
        let ticket = admitted(&mut machine, later);
        assert_eq!(machine.record(ticket, CallResult::Failure, later), None);
    }

    #[test]
    fn a_failed_probe_opens_again_and_late_results_do_not_count() {
        let mut machine = Machine::new(config(BreakerWindow::Calls(4)));
        let now = Instant::now();
        let late = admitted(&mut machine, now);
        for _ in 0..4 {
            let ticket = admitted(&mut machine, now);
            machine.record(ticket, CallResult::Failure, now);
        }
        let later = now + Duration::from_secs(10);
        let probe = admitted(&mut machine, later);
        // A call admitted while closed ends during half-open: not a probe.
        assert_eq!(machine.record(late, CallResult::Success, later), None);
        assert_eq!(
            machine.record(probe, CallResult::Failure, later),
            Some(BreakerState::Open)
        );
        assert!(machine.refuses(later));
    }

    #[test]
    fn an_ignored_probe_frees_its_slot() {
        let mut machine = Machine::new(config(BreakerWindow::Calls(4)).half_open_probes(1));
        let now = Instant::now();
        for _ in 0..4 {
            let ticket = admitted(&mut machine, now);
            machine.record(ticket, CallResult::Failure, now);
        }
        let later = now + Duration::from_secs(10);
        let probe = admitted(&mut machine, later);
        assert_eq!(machine.admit(later).0, Admission::WaitForProbes);
        machine.record(probe, CallResult::Ignored, later);
        assert!(admitted(&mut machine, later).probe);
    }

    #[test]
    fn a_time_window_forgets_old_failures() {
        let mut machine = Machine::new(config(BreakerWindow::Time(Duration::from_secs(10))));
        let now = Instant::now();
        for _ in 0..3 {
            let ticket = admitted(&mut machine, now);
            machine.record(ticket, CallResult::Failure, now);
        }
        // The three failures are out of the window: one of four fails.
        let later = now + Duration::from_secs(11);
        for result in [
            CallResult::Success,
            CallResult::Success,
            CallResult::Success,
        ] {
            let ticket = admitted(&mut machine, later);
            assert_eq!(machine.record(ticket, result, later), None);
        }
        let ticket = admitted(&mut machine, later);
        assert_eq!(machine.record(ticket, CallResult::Failure, later), None);
        assert_eq!(machine.state(), BreakerState::Closed);
    }
}
