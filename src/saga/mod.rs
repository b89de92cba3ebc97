//! Sagas (process managers): a business process across services, moved on
//! by events, with timeouts and compensation.
//!
//! A saga is state keyed by a correlation id, in a JetStream KV bucket
//! (`SAGA_{name}`). One event type starts it; others move it on. A handler
//! gets the event and the saga's state ([`Step`]) and returns a
//! [`Transition`]: the new state and what to send. The host (a consumer
//! group: every instance shares the work) then:
//!
//! 1. stores the new state with a compare-and-set on the key's revision.
//!    When another instance stored a transition of the same saga first, the
//!    handler runs again on the newer state: no update is lost. The applied
//!    event's id is recorded, so a redelivered event is not applied twice;
//! 2. sends what the transition asked for, kept in the stored record until
//!    sent (an outbox: a host that dies in between, or the next event of the
//!    saga, sends it again, under the same derived ids, which JetStream
//!    dedups);
//! 3. archives a finished saga in `SAGA_{name}_DONE`.
//!
//! # Timeouts
//!
//! [`Transition::timeout`] asks for an event at a time. It is a server
//! message schedule (nats-server 2.12+, `Nats-Schedule: @at ...`,
//! [`Schedule`]): a message on `{env}.sagatimer.{saga}.{correlation}.{timer}`
//! in the saga's stream that the server publishes on the timeout event's
//! subject when due, so it survives restarts of the host. Cancelled or
//! replaced timers are purged; a timeout that arrives anyway (cancelled
//! while it fired, or after the saga finished) is ignored.
//!
//! # Compensation
//!
//! Each step registers the command that undoes it
//! ([`Transition::compensate_with`]). A transition that fails the saga
//! ([`Transition::fail`], from a failure event or a timeout) sends them, the
//! last registered first.
//!
//! # Inspecting
//!
//! [`Sagas`] lists the running sagas with their state and pending timeouts,
//! and finds a finished one.

mod definition;
mod error;
mod host;
mod record;
mod schedule;
mod store;
mod transition;
mod view;

pub use definition::Saga;
pub use error::{SagaError, SagaErrorKind};
pub use record::{PendingTimeout, SagaStatus};
pub use schedule::Schedule;
pub use transition::{Step, Transition};
pub use view::{SagaSummary, Sagas};
