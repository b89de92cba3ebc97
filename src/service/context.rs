//! [`Context`]: what an endpoint gets with a request besides its data.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::envelope::Envelope;
use crate::event::Event;
use crate::lineage::Lineage;
use crate::publish::{PublishError, Publisher, Receipt};

/// The request's envelope, the caller's deadline, the service's state and a
/// publisher for follow-up events.
#[derive(Clone, Debug)]
pub struct Context<S = ()> {
    request: Arc<Envelope>,
    deadline: Option<Instant>,
    lineage: Lineage,
    publisher: Publisher,
    state: S,
}

impl<S> Context<S> {
    pub(crate) fn new(
        request: Arc<Envelope>,
        deadline: Option<Instant>,
        lineage: Lineage,
        publisher: Publisher,
        state: S,
    ) -> Self {
        Self {
            request,
            deadline,
            lineage,
            publisher,
            state,
        }
    }

    /// The request as a CloudEvent: id, source, correlation id, extensions.
    pub fn envelope(&self) -> &Envelope {
        &self.request
    }

    /// When the caller stops waiting, if it said: the time the request
    /// arrived plus the budget in its `Jetevents-Request-Timeout` header.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before [`deadline`](Self::deadline), zero once past.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The service's state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Publishes a follow-up event caused by the request: its `causationid`
    /// is the request's id, its `correlationid` the request's, and its trace
    /// continues the request's.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Receipt, PublishError> {
        let publish = self.publisher.publish(event);
        crate::lineage::with_lineage(self.lineage.clone(), publish).await
    }

    /// The request's lineage: its id and correlation.
    pub(crate) fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// The same request with other state.
    pub(crate) fn map_state<S2>(self, f: impl FnOnce(S) -> S2) -> Context<S2> {
        Context {
            request: self.request,
            deadline: self.deadline,
            lineage: self.lineage,
            publisher: self.publisher,
            state: f(self.state),
        }
    }
}
