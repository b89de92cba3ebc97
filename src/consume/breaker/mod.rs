//! A circuit breaker for handlers: when too many calls to a downstream
//! fail, stop calling it for a while, then probe, then resume.
//!
//! [`CircuitBreaker`] counts the outcomes of the calls it wraps: an ack is
//! a success, a retry (a transient error, a timeout, a panic, an error out
//! of a layer) a failure, a dead letter neither (the event was bad, not the
//! downstream). Its states are resilience4j's:
//!
//! | state | calls | leaves it when |
//! |-------|-------|----------------|
//! | closed | run; results go into the [window](BreakerWindow) | the window holds the [minimum calls](BreakerConfig::minimum_calls) and the [failure rate](BreakerConfig::failure_rate) is reached: open |
//! | open | **held**: the delivery waits, with in-progress acks, and is not run | the [open duration](BreakerConfig::open_for) is over: half-open |
//! | half-open | [probes](BreakerConfig::half_open_probes) run, the others stay held | a probe fails: open again; every probe succeeds: closed |
//!
//! Held deliveries spend nothing: no attempt (the handler timeout stops
//! while a delivery is held, so holding never times out into a failed run),
//! no redelivery (the in-progress acks keep the delivery), no dead letter.
//! A failed probe says the downstream is still down, nothing about its
//! event: the probe's delivery is held again for the next half-open state
//! instead of spending one of its attempts. The calls that opened the
//! breaker, and those already running when it opened, are ordinary failed
//! runs and retried as usual.
//!
//! # Per consumer or per route
//!
//! [`ConsumerBuilder::circuit_breaker`](super::ConsumerBuilder::circuit_breaker)
//! puts the breaker around every route and also **stops pulling** while it
//! is open (and while half-open with held deliveries to probe with): events
//! stay on the server, their delivery counts untouched, and the events
//! already received wait without being Naked back.
//!
//! As a [`route_layer`](super::ConsumerBuilder::route_layer)
//! ([`CircuitBreaker::layer`]) it holds that route's deliveries only;
//! other types go on, and pulling stops only once held deliveries take
//! every handler slot (the [concurrency](super::ConsumerBuilder::concurrency)
//! bounds them). A route that must stop without slowing the others gets
//! its own subjects and consumer (see the README's "Priorities and circuit
//! breaking").
//!
//! # Observability
//!
//! A held delivery counts as in flight, and its wait is part of its
//! `messaging.process.duration`.
//!
//! - Metric `jetevents.consume.breaker.state` (gauge: 0 closed, 1 open, 2
//!   half-open) and `jetevents.consume.breaker.transitions` (counter, by the
//!   state entered), both with `jetevents.breaker.name`.
//! - On the `process` span: `jetevents.breaker.state`, the state the call
//!   was let through in (`closed` or `half_open`), and the events "held by
//!   an open circuit breaker" and "circuit breaker opened / half-open /
//!   closed" (an OpenTelemetry span event each).
//!
//! ```no_run
//! use std::time::Duration;
//! use jetevents::consume::{BreakerConfig, BreakerWindow, CircuitBreaker, Consumer, Context, HandlerError};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
//! # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
//! # async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
//! # fn f(client: jetevents::client::Client) {
//! let ledger_api = CircuitBreaker::new(
//!     "ledger-api",
//!     BreakerConfig::default()
//!         .window(BreakerWindow::Time(Duration::from_secs(30)))
//!         .minimum_calls(20)
//!         .failure_rate(0.5)
//!         .open_for(Duration::from_secs(15)),
//! );
//! let builder = Consumer::builder(&client, "ledger")
//!     .handle(on_paid)
//!     .circuit_breaker(&ledger_api);
//! # }
//! ```

mod config;
pub(crate) mod hold;
mod layer;
mod machine;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use opentelemetry::KeyValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;

pub use config::{BreakerConfig, BreakerWindow};
pub use layer::{CircuitBreakerLayer, CircuitBreakerService};

use hold::Held;
use machine::{Admission, CallResult, Machine, Ticket};

/// Metric attribute: the breaker's name.
const BREAKER_NAME: &str = "jetevents.breaker.name";
/// Metric attribute: the state a transition entered.
const BREAKER_STATE: &str = "jetevents.breaker.state";

/// The state of a [`CircuitBreaker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls run.
    Closed,
    /// Calls are held.
    Open,
    /// Probes run; the other calls are held.
    HalfOpen,
}

impl BreakerState {
    /// The name on spans and metrics: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the state gauge.
    fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// A circuit breaker around handler calls (see the [module docs](self)).
/// Clones share one state: one breaker may guard the routes of several
/// consumers that call the same downstream.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    name: Arc<str>,
    machine: Mutex<Machine>,
    /// Bumped at each transition, to wake held calls.
    transitions: watch::Sender<()>,
    /// The client's instruments, from the first consumer or call.
    metrics: OnceLock<Metrics>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (its metrics' and spans' attribute).
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: Arc::from(name.into()),
                machine: Mutex::new(Machine::new(config)),
                transitions: watch::Sender::new(()),
                metrics: OnceLock::new(),
            }),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its state now. An open breaker whose open duration is over stays
    /// `Open` until a call comes and makes it half-open.
    pub fn state(&self) -> BreakerState {
        self.machine().state()
    }

    /// The tower layer, for [`route_layer`](super::ConsumerBuilder::route_layer)
    /// or [`layer`](super::ConsumerBuilder::layer) (which, unlike
    /// [`circuit_breaker`](super::ConsumerBuilder::circuit_breaker), do not
    /// stop the pulling).
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.clone())
    }

    /// Whether a consumer guarded by this breaker should pull no more
    /// events, with `running` handler calls (held ones included): while
    /// open, and while not closed if a held call is there to probe with.
    pub(crate) fn pauses_pulling(&self, running: usize) -> bool {
        let machine = self.machine();
        machine.refuses(Instant::now()) || (running > 0 && machine.state() != BreakerState::Closed)
    }

    /// Whether calls are held now: events received meanwhile wait for it,
    /// not for a hung handler.
    pub(crate) fn is_holding(&self) -> bool {
        self.machine().state() != BreakerState::Closed
    }

    /// Reports on `metrics` from now on (the first consumer's client wins).
    pub(crate) fn bind_metrics(&self, metrics: &Metrics) {
        if self.shared.metrics.set(metrics.clone()).is_ok() {
            let state = self.state();
            metrics
                .breaker_state
                .record(state.gauge_value(), &[self.name_attribute()]);
        }
    }

    /// Waits until a call may run; holds the delivery meanwhile.
    async fn admit(&self) -> Permit {
        // Subscribed before looking at the state: a transition in between
        // still wakes this call.
        let mut transitions = self.shared.transitions.subscribe();
        let mut held: Option<Held> = None;
        loop {
            let (admission, transition) = self.machine().admit(Instant::now());
            if let Some(state) = transition {
                self.report(state);
            }
            let wake_at = match admission {
                Admission::Admitted(ticket) => {
                    return Permit {
                        breaker: self.clone(),
                        ticket: Some(ticket),
                    };
                }
                Admission::WaitUntil(until) => Some(until),
                Admission::WaitForProbes => None,
            };
            if held.is_none() {
                tracing::info!(breaker = %self.shared.name, "held by an open circuit breaker");
                held = Some(Held::start());
            }
            let due = async {
                match wake_at {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // The sender lives as long as this breaker: never closed.
                _ = transitions.changed() => {}
                () = due => {}
            }
        }
    }

    fn finish(&self, ticket: Ticket, result: CallResult) -> Option<BreakerState> {
        let transition = self.machine().record(ticket, result, Instant::now());
        if let Some(state) = transition {
            self.report(state);
        }
        transition
    }

    /// A transition: on the current span, the metrics, and to held calls.
    fn report(&self, state: BreakerState) {
        let name = &self.shared.name;
        match state {
            BreakerState::Open => tracing::warn!(breaker = %name, "circuit breaker opened"),
            BreakerState::HalfOpen => tracing::info!(breaker = %name, "circuit breaker half-open"),
            BreakerState::Closed => tracing::info!(breaker = %name, "circuit breaker closed"),
        }
        if let Some(metrics) = self.shared.metrics.get() {
            let name = self.name_attribute();
            metrics
                .breaker_state
                .record(state.gauge_value(), std::slice::from_ref(&name));
            metrics
                .breaker_transitions
                .add(1, &[name, KeyValue::new(BREAKER_STATE, state.as_str())]);
        }
        self.shared.transitions.send_replace(());
    }

    fn name_attribute(&self) -> KeyValue {
        KeyValue::new(BREAKER_NAME, self.shared.name.to_string())
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        // Nothing panics while holding it; a poisoned one is still whole.
        self.shared
            .machine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call let through. Dropped unfinished (the call was cancelled), it
/// counts as neither success nor failure and frees its probe slot.
struct Permit {
    breaker: CircuitBreaker,
    ticket: Option<Ticket>,
}

impl Permit {
    fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|ticket| ticket.probe)
    }

    fn finish(mut self, result: CallResult) -> Option<BreakerState> {
        let ticket = self.ticket.take()?;
        self.breaker.finish(ticket, result)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.finish(ticket, CallResult::Ignored);
        }
    }
}
