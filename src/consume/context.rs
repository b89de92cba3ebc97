//! What a handler knows about the event it handles, and how it publishes
//! follow-up events.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::envelope::Envelope;
use crate::event::Event;
use crate::lineage::{Cause, Lineage, Ordinals};
use crate::publish::{PublishError, PublishOptions, Publisher, Receipt};

/// The second argument of every handler: the event's metadata, the shared
/// state and a publisher for follow-up events.
///
/// Cheap to clone (the metadata is shared, the state is cloned: wrap large
/// state in an `Arc`).
///
/// ```no_run
/// use jetevents::consume::{Context, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct AppointmentConfirmed { id: String }
/// # impl jetevents::Event for AppointmentConfirmed { const TYPE: &'static str = "booking.appointment.confirmed.v1"; }
/// # #[derive(Serialize, Deserialize)] struct ReminderScheduled { appointment_id: String }
/// # impl jetevents::Event for ReminderScheduled { const TYPE: &'static str = "notify.reminder.scheduled.v1"; }
///
/// async fn on_confirmed(
///     event: AppointmentConfirmed,
///     ctx: Context<()>,
/// ) -> Result<(), HandlerError> {
///     println!("{} (delivery {})", ctx.id(), ctx.delivery_count());
///     // causationid = this event's id, correlationid carried over.
///     ctx.publish(&ReminderScheduled { appointment_id: event.id }).await?;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Context<S = ()> {
    meta: Arc<Meta>,
    state: S,
}

#[derive(Debug)]
struct Meta {
    envelope: Envelope,
    // Shared with the delivery rather than copied: a reference count, not
    // an allocation per event.
    subject: async_nats::Subject,
    group: Arc<str>,
    delivery_count: u64,
    stream_sequence: Option<u64>,
    /// Shared: a publisher is large (its optional claim check holds a whole
    /// stream description), and copying it would make every context a
    /// large allocation.
    publisher: Arc<Publisher>,
    /// Made with the context, so once per handler call: its follow-up
    /// ordinals start at 0 on every run. The context is its lineage's
    /// cause (see [`Context::lineage`]).
    ordinals: Ordinals,
}

impl Cause for Meta {
    fn event_id(&self) -> &str {
        &self.envelope.id
    }

    fn correlation_id(&self) -> &str {
        self.envelope
            .correlation_id()
            .unwrap_or(self.envelope.id.as_str())
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn ordinals(&self) -> &Ordinals {
        &self.ordinals
    }
}

impl<S> Context<S> {
    pub(crate) fn new(
        envelope: Envelope,
        subject: async_nats::Subject,
        group: Arc<str>,
        delivery_count: u64,
        stream_sequence: Option<u64>,
        publisher: impl Into<Arc<Publisher>>,
        state: S,
    ) -> Self {
        Self {
            meta: Arc::new(Meta {
                envelope,
                subject,
                group,
                delivery_count,
                stream_sequence,
                publisher: publisher.into(),
                ordinals: Ordinals::default(),
            }),
            state,
        }
    }

    /// The event's CloudEvents `id`.
    pub fn id(&self) -> &str {
        &self.meta.envelope.id
    }

    /// The event's CloudEvents `source` (the producing service).
    pub fn source(&self) -> &str {
        &self.meta.envelope.source
    }

    /// The event's CloudEvents `type` as published (for an upcast event, the
    /// old type).
    pub fn event_type(&self) -> &str {
        &self.meta.envelope.event_type
    }

    /// The NATS subject the event was published on.
    pub fn subject(&self) -> &str {
        self.meta.subject.as_str()
    }

    /// When the event happened (CloudEvents `time`).
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.meta.envelope.time
    }

    /// Which delivery this is: 1 the first time, 2 for the first retry, ...
    /// Always 1 for ephemeral (core NATS) events.
    pub fn delivery_count(&self) -> u64 {
        self.meta.delivery_count
    }

    /// The event's sequence in its stream; `None` for ephemeral events.
    pub fn stream_sequence(&self) -> Option<u64> {
        self.meta.stream_sequence
    }

    /// The `correlationid` extension: the conversation this event is part of.
    pub fn correlation_id(&self) -> Option<&str> {
        self.meta.envelope.correlation_id()
    }

    /// The `causationid` extension: the id of the event that caused this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.meta.envelope.causation_id()
    }

    /// The consumer group (durable name or queue group) handling the event.
    pub fn group(&self) -> &str {
        &self.meta.group
    }

    /// The whole envelope: every attribute and extension, and the raw data.
    pub fn envelope(&self) -> &Envelope {
        &self.meta.envelope
    }

    /// The state given to the consumer's `with_state`.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The publisher of the consumer's client.
    pub fn publisher(&self) -> &Publisher {
        &self.meta.publisher
    }

    /// Publishes a follow-up event: its `causationid` is this event's id and
    /// its `correlationid` this event's correlation id (or its id when it has
    /// none). Called inside the handler, the trace continues too.
    ///
    /// Its id is derived from this event's id, the group, the follow-up's
    /// type and how many of that type this handler run published before, so
    /// a run retried after a failure publishes the same follow-ups under the
    /// same ids and JetStream stores them once (within the stream's duplicate
    /// window). Publish them in the same order on every run; see
    /// [`Lineage`] for the details.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Receipt, PublishError> {
        self.publish_with(event, PublishOptions::new()).await
    }

    /// [`publish`](Self::publish) with options. An id, causation and
    /// correlation ids set in `options` win over the ones derived from this
    /// event.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Receipt, PublishError> {
        let lineage = self.lineage();
        let publish = self.meta.publisher.publish_with(event, options);
        crate::lineage::with_lineage(lineage, publish).await
    }

    /// The same event with other state.
    pub(crate) fn map_state<S2>(self, f: impl FnOnce(S) -> S2) -> Context<S2> {
        Context {
            meta: self.meta,
            state: f(self.state),
        }
    }

    /// This event as the cause of what its handler publishes, shared by
    /// every clone of this context: the lineage is the context's metadata,
    /// not a copy of its ids.
    pub(crate) fn lineage(&self) -> Lineage {
        Lineage::of(self.meta.clone())
    }
}
