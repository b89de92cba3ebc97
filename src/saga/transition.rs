//! What a saga handler gets (the saga's state) and returns (the new state
//! and what to send).

use chrono::{DateTime, Utc};

use super::record::StoredEvent;
use crate::consume::HandlerError;
use crate::event::Event;

/// The saga as a handler sees it: its state, correlation id and the event
/// being applied.
#[derive(Clone, Debug)]
pub struct Step<S> {
    pub(crate) state: S,
    pub(crate) correlation_id: String,
    pub(crate) event_id: String,
}

impl<S> Step<S> {
    /// The state before this event (`S::default()` for the start event).
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The state, to change it.
    pub fn into_state(self) -> S {
        self.state
    }

    /// The saga's key: the `correlationid` of its events.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// The id of the event being applied.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

/// How a saga ends with a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Complete,
    Fail(String),
}

/// The outcome of a saga handler: the new state, and the commands, events,
/// compensations and timeouts it asks for. Nothing is sent unless the new
/// state is stored (a transition that loses the race to another instance is
/// made again on the newer state and its sends are dropped).
///
/// ```
/// use jetevents::saga::Transition;
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ReserveStock { order: String }
/// # impl jetevents::Event for ReserveStock { const TYPE: &'static str = "stock.item.reserve.v1"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct ReleaseStock { order: String }
/// # impl jetevents::Event for ReleaseStock { const TYPE: &'static str = "stock.item.release.v1"; }
/// # fn f() -> Result<(), jetevents::consume::HandlerError> {
/// let transition = Transition::to(1u32)
///     .send(&ReserveStock { order: "o-1".into() })?
///     .compensate_with(&ReleaseStock { order: "o-1".into() })?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a transition does nothing unless the handler returns it"]
pub struct Transition<S> {
    pub(crate) state: S,
    pub(crate) sends: Vec<StoredEvent>,
    pub(crate) compensations: Vec<StoredEvent>,
    pub(crate) timeouts: Vec<(String, DateTime<Utc>, StoredEvent)>,
    pub(crate) cancels: Vec<String>,
    pub(crate) ending: Option<Ending>,
}

impl<S> Transition<S> {
    /// The saga moves on to `state`.
    pub fn to(state: S) -> Self {
        Self {
            state,
            sends: Vec::new(),
            compensations: Vec::new(),
            timeouts: Vec::new(),
            cancels: Vec::new(),
            ending: None,
        }
    }

    /// Sends `event` (a command or an event) once the state is stored, with
    /// the saga's correlation id and an id derived from the applied event.
    pub fn send<E: Event>(mut self, event: &E) -> Result<Self, HandlerError> {
        self.sends.push(stored(event)?);
        Ok(self)
    }

    /// Registers `event` as the compensation of this step: when the saga
    /// fails or times out, compensations are sent, the last registered first.
    pub fn compensate_with<E: Event>(mut self, event: &E) -> Result<Self, HandlerError> {
        self.compensations.push(stored(event)?);
        Ok(self)
    }

    /// Asks for `event` at `at`, as the timer `timer` of this saga (the
    /// server holds it: it fires after a restart of the host or the server).
    /// Asking again for the same timer replaces it. Handle `E` with
    /// [`Saga::on`](super::Saga::on): it arrives like any event, and only
    /// while the timer is pending (a cancelled, replaced or already handled
    /// timeout is ignored, and so is one after the saga finished).
    pub fn timeout<E: Event>(
        mut self,
        timer: &str,
        at: DateTime<Utc>,
        event: &E,
    ) -> Result<Self, HandlerError> {
        if !is_timer_name(timer) {
            return Err(HandlerError::permanent(format!(
                "timer name {timer:?} is not A-Z a-z 0-9 - _"
            )));
        }
        self.cancels.retain(|name| name != timer);
        self.timeouts.push((timer.to_owned(), at, stored(event)?));
        Ok(self)
    }

    /// Cancels the timer `timer` (nothing happens when it is not pending).
    pub fn cancel_timeout(mut self, timer: &str) -> Self {
        self.timeouts.retain(|(name, _, _)| name != timer);
        self.cancels.push(timer.to_owned());
        self
    }

    /// The saga is done: its pending timeouts are cancelled and its record
    /// archived.
    pub fn complete(mut self) -> Self {
        self.ending = Some(Ending::Complete);
        self
    }

    /// The saga failed: its compensations are sent in reverse order of
    /// registration, its pending timeouts cancelled and its record archived.
    pub fn fail(mut self, reason: impl Into<String>) -> Self {
        self.ending = Some(Ending::Fail(reason.into()));
        self
    }
}

fn stored<E: Event>(event: &E) -> Result<StoredEvent, HandlerError> {
    let data = serde_json::to_value(event).map_err(HandlerError::permanent)?;
    Ok(StoredEvent {
        id: String::new(),
        cause: String::new(),
        event_type: E::TYPE.to_owned(),
        key: event.key(),
        data,
    })
}

/// Timer names become a subject token.
pub(crate) fn is_timer_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
