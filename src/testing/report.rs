//! [`Report`]: what happened to the events of one consumer group, typed,
//! read from the engine's settlement history and its streams.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::consume::dead_letter::{self, DeadLetter};
use crate::consume::DeadLetterConfig;
use crate::envelope::Envelope;
use crate::event::Event;

use super::jetstream::{Action, HistoryEntry, MemoryJetStream, StoredMessage};

/// What a consumer group did with the events of a stream, from
/// [`TestKit::report`](super::TestKit::report).
///
/// ```
/// use std::time::Duration;
///
/// use jetevents::consume::{Consumer, Context, HandlerError};
/// use jetevents::provision::StreamSpec;
/// use jetevents::testing::{Retry, TestKit};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, PartialEq, Serialize, Deserialize)] struct OrderPlaced { order: String }
/// # impl jetevents::Event for OrderPlaced { const TYPE: &'static str = "shop.order.placed.v1"; }
///
/// async fn on_placed(_: OrderPlaced, ctx: Context<()>) -> Result<(), HandlerError> {
///     if ctx.delivery_count() == 1 {
///         let busy = HandlerError::transient("warehouse busy");
///         return Err(busy.retry_after(Duration::from_secs(20)));
///     }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kit = TestKit::new();
/// let spec = StreamSpec::for_domain(kit.client().subjects(), "SHOP", "shop")?;
/// kit.client().ensure_stream(&spec).await?;
/// let consumer = Consumer::builder(kit.client(), "billing").handle(on_placed).build().await?;
/// let running = kit.run(consumer);
///
/// let order = OrderPlaced { order: "o-1".into() };
/// let receipt = kit.client().publisher().publish(&order).await?;
/// kit.wait_idle("SHOP", "billing").await?;
/// running.stop().await?;
///
/// let report = kit.report("SHOP", "billing");
/// assert_eq!(report.handled::<OrderPlaced>(), [order]);
/// let retry = Retry::new(1, Some(Duration::from_secs(20)));
/// assert_eq!(report.retries_of(&receipt.event_id), [retry]);
/// assert!(report.dead_letters.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The stream.
    pub stream: String,
    /// The consumer group (its durable consumer).
    pub group: String,
    /// Every delivery and settlement, in order.
    pub history: Vec<HistoryEntry>,
    /// The events acked, in the order of their acks.
    pub handled: Vec<Envelope>,
    /// The events negatively acknowledged at least once, with each Nak.
    pub retried: Vec<Retried>,
    /// The group's dead letters from this stream in the default
    /// dead-letter stream, in the order they were stored.
    pub dead_letters: Vec<DeadLetter>,
    /// The events terminated, in order. The runner terminates after a dead
    /// letter, so dead-lettered events are here too.
    pub terminated: Vec<Envelope>,
    /// Events the group's handlers published: in any stream, whose
    /// causation id is the id of an event delivered to the group.
    pub follow_ups: Vec<Envelope>,
}

/// An event negatively acknowledged at least once.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Retried {
    /// The event.
    pub event: Envelope,
    /// Each Nak, in order.
    pub retries: Vec<Retry>,
}

/// One negative acknowledgement of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// The delivery count of the delivery Nak'ed (1 for the first).
    pub delivery: u64,
    /// The delay asked for before redelivery (`None`: at once).
    pub delay: Option<Duration>,
}

impl Retry {
    /// A Nak of delivery number `delivery` asking for `delay`, to compare
    /// with [`Report::retries_of`].
    pub fn new(delivery: u64, delay: Option<Duration>) -> Self {
        Self { delivery, delay }
    }
}

impl Report {
    pub(super) fn read(jetstream: &MemoryJetStream, stream: &str, group: &str) -> Self {
        let messages = jetstream.messages(stream);
        let history = jetstream.history(stream, group);
        let envelope_at = |sequence: u64| {
            messages
                .iter()
                .find(|message| message.sequence == sequence)
                .and_then(decode)
        };
        // Each message once, where the first entry matching `wanted` is.
        let sequences_where = |wanted: fn(&Action) -> bool| {
            let mut seen = BTreeSet::new();
            history
                .iter()
                .filter(|entry| wanted(&entry.action) && seen.insert(entry.stream_sequence))
                .map(|entry| entry.stream_sequence)
                .collect::<Vec<_>>()
        };
        let events_where = |wanted: fn(&Action) -> bool| {
            sequences_where(wanted)
                .into_iter()
                .filter_map(envelope_at)
                .collect::<Vec<_>>()
        };
        let handled = events_where(|action| *action == Action::Acked);
        let terminated = events_where(|action| matches!(action, Action::Terminated { .. }));
        let delivered = events_where(|action| *action == Action::Delivered);
        let retried = sequences_where(|action| matches!(action, Action::Naked { .. }))
            .into_iter()
            .filter_map(|sequence| {
                let retries = history
                    .iter()
                    .filter(|entry| entry.stream_sequence == sequence)
                    .filter_map(|entry| match entry.action {
                        Action::Naked { delay } => Some(Retry {
                            delivery: entry.deliveries,
                            delay,
                        }),
                        _ => None,
                    })
                    .collect();
                let event = envelope_at(sequence)?;
                Some(Retried { event, retries })
            })
            .collect();
        let delivered_ids: BTreeSet<&str> = delivered.iter().map(|e| e.id.as_str()).collect();
        let follow_ups = published_events(jetstream)
            .into_iter()
            .filter(|event| {
                event
                    .causation_id()
                    .is_some_and(|cause| delivered_ids.contains(cause))
            })
            .collect();
        let dead_letters = super::kit::dead_letters_in(jetstream, &DeadLetterConfig::default())
            .into_iter()
            .filter(|dead| dead.original_stream == stream && dead.consumer == group)
            .collect();
        Self {
            stream: stream.to_owned(),
            group: group.to_owned(),
            history,
            handled,
            retried,
            dead_letters,
            terminated,
            follow_ups,
        }
    }

    /// The events of type `E` acked, as `E`, in the order of their acks.
    pub fn handled<E: Event>(&self) -> Vec<E> {
        decode_all(&self.handled)
    }

    /// Whether the event with this id was acked.
    pub fn was_handled(&self, event_id: &str) -> bool {
        self.handled.iter().any(|event| event.id == event_id)
    }

    /// The Naks of the event with this id, in order (empty if none).
    pub fn retries_of(&self, event_id: &str) -> Vec<Retry> {
        self.retried
            .iter()
            .find(|retried| retried.event.id == event_id)
            .map(|retried| retried.retries.clone())
            .unwrap_or_default()
    }

    /// The dead letter of the event with this id, if it has one.
    pub fn dead_letter_of(&self, event_id: &str) -> Option<&DeadLetter> {
        self.dead_letters.iter().find(|dead| {
            dead.envelope()
                .is_ok_and(|envelope| envelope.id == event_id)
        })
    }

    /// The follow-ups of type `E`, as `E`, in the order they were published.
    pub fn follow_ups<E: Event>(&self) -> Vec<E> {
        decode_all(&self.follow_ups)
    }

    /// The follow-ups published while handling the event with this id.
    pub fn follow_ups_of(&self, event_id: &str) -> Vec<&Envelope> {
        self.follow_ups
            .iter()
            .filter(|event| event.causation_id() == Some(event_id))
            .collect()
    }
}

/// Every event published to any stream, in the order stored; copies in
/// dead-letter streams are left out (they are not publications).
pub(super) fn published_events(jetstream: &MemoryJetStream) -> Vec<Envelope> {
    let mut stored: Vec<StoredMessage> = jetstream
        .stream_names()
        .iter()
        .flat_map(|stream| jetstream.messages(stream))
        .filter(|message| {
            message
                .headers
                .as_ref()
                .is_none_or(|headers| headers.get(dead_letter::REASON).is_none())
        })
        .collect();
    // Stable: messages stored at the same instant keep their stream's order.
    stored.sort_by_key(|message| message.published);
    stored.iter().filter_map(decode).collect()
}

/// The events of type `E` among `events`, as `E`.
pub(super) fn decode_all<'a, E: Event>(events: impl IntoIterator<Item = &'a Envelope>) -> Vec<E> {
    events
        .into_iter()
        .filter(|envelope| envelope.event_type == E::TYPE)
        .filter_map(|envelope| envelope.decode_data::<E>().ok())
        .collect()
}

/// The message as a CloudEvent, if it is one.
fn decode(message: &StoredMessage) -> Option<Envelope> {
    crate::codec::decode(message.headers.as_ref(), &message.payload).ok()
}
