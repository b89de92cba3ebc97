//! What the engine hands out: stored messages for assertions, deliveries to
//! settle, and advisories.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::nats::HeaderMap;

use super::error::AckError;
use super::MemoryJetStream;

/// A message as a stream stores it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoredMessage {
    /// The subject it was published to.
    pub subject: String,
    /// Its headers, `None` when it had none.
    pub headers: Option<HeaderMap>,
    /// Its payload.
    pub payload: Bytes,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// When it was stored, on the engine's clock (it moves with tokio's
    /// virtual time).
    pub published: SystemTime,
}

/// Where a delivery stands, as the server's ack reply subject encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// This delivery's sequence in the consumer (every delivery gets a new one).
    pub consumer_sequence: u64,
    /// How many times this message has been delivered to this consumer, 1 the first time.
    pub delivered: u64,
    /// Messages matching the consumer's filter not delivered yet.
    pub pending: u64,
    /// When the message was stored.
    pub published: SystemTime,
}

/// What a settlement says about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack,
    Nak(Option<Duration>),
    InProgress,
}

/// A message delivered to one caller of a durable consumer, to settle once
/// handled. Dropping it without settling leaves it pending until its ack wait
/// runs out, as with a real server.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub(crate) engine: MemoryJetStream,
    pub(crate) message: StoredMessage,
    pub(crate) info: DeliveryInfo,
}

impl Delivery {
    /// The subject the message was published to.
    pub fn subject(&self) -> &str {
        &self.message.subject
    }

    /// The message's headers.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    /// The message's payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// Sequences, delivery count and pending count of this delivery.
    pub fn info(&self) -> DeliveryInfo {
        self.info.clone()
    }

    /// Acknowledges the message: it will not be delivered again. A late ack
    /// (after the ack wait, even of an older delivery of a redelivered message)
    /// still acks it, as on the server.
    pub fn ack(&self) -> Result<(), AckError> {
        self.engine.settle(&self.info, Settlement::Ack)
    }

    /// Asks for redelivery after `delay`, or at once with `None`.
    pub fn nak(&self, delay: Option<Duration>) -> Result<(), AckError> {
        self.engine.settle(&self.info, Settlement::Nak(delay))
    }

    /// Says the message is still being worked on: its ack wait starts again.
    pub fn in_progress(&self) -> Result<(), AckError> {
        self.engine.settle(&self.info, Settlement::InProgress)
    }

    /// Terminates the message: never delivered again; emits
    /// [`Advisory::Terminated`] with an empty reason.
    pub fn term(&self) -> Result<(), AckError> {
        self.term_with_reason("")
    }

    /// [`term`](Self::term) with the reason carried in the advisory.
    pub fn term_with_reason(&self, reason: &str) -> Result<(), AckError> {
        self.engine.terminate(&self.info, reason)
    }
}

/// The consumer advisories the engine emits (the server publishes them on
/// `$JS.EVENT.ADVISORY.CONSUMER.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Advisory {
    /// A message reached `max_deliver` and will not be delivered again.
    MaxDeliveries {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// How many times it was delivered.
        deliveries: u64,
    },
    /// A delivery was terminated.
    Terminated {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// The terminated delivery's count.
        deliveries: u64,
        /// The reason given, empty if none.
        reason: String,
    },
    /// A pending delivery was negatively acknowledged.
    Nak {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// The nak'ed delivery's count.
        deliveries: u64,
    },
}
