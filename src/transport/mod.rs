//! The seam between jetevents and a JetStream.
//!
//! The publisher and the consumer runtime reach the server only through
//! these traits: [`Transport`] stores messages and says what the stream
//! answered; [`Delivery`] is one message handed to a consumer, with the
//! ways to settle it. They are implemented for NATS JetStream ([`nats`])
//! and, behind the `testing` feature, for the in-memory JetStream of the
//! test kit. What only JetStream has (its pull inbox, the watchdog, the
//! advisories) stays on its side of the seam.
//!
//! The event store also reads streams back through it: the last or next
//! message on a subject filter (JetStream's direct gets) and ordered reads
//! of a filter from a sequence or a time (JetStream's ordered consumers).

pub(crate) mod atomic_batch;
pub(crate) mod delivery;
pub(crate) mod fast_ingest;
pub(crate) mod message_buffer;
pub(crate) mod nats;
pub(crate) mod nats_delivery;
mod publish_acks;

use std::fmt;
use std::time::SystemTime;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::error::BoxError;

pub(crate) use atomic_batch::{BatchFailure, BatchFailureKind, BatchMessage, StoredBatch};
pub(crate) use delivery::{Delivery, DeliveryInfo};

/// The stream's answer to a stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub(crate) stream: String,
    pub(crate) sequence: u64,
    /// The message id was seen within the duplicate window: not stored
    /// again, and `sequence` is the first copy's.
    pub(crate) duplicate: bool,
}

/// Why a message was not stored, as the publisher tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreFailureKind {
    /// No answer in time: it may or may not be stored.
    TimedOut,
    /// Nobody answered: no stream captures the subject, or its leader is
    /// being elected.
    NoResponders,
    /// An expected last sequence did not hold; the stream's is `actual`.
    WrongLastSequence { actual: Option<u64> },
    /// Headers and payload are over the server's maximum.
    MaxPayloadExceeded,
    /// The connection broke while sending.
    BrokenPipe,
    /// The stream is still storing an earlier attempt with the same message
    /// id (JetStream error 10158, seen while a partition delays its
    /// replication): that attempt may or may not end up stored.
    DuplicateInProcess,
    /// Refused for another reason.
    Rejected,
}

/// A message the stream did not store, with the transport's own error.
#[derive(Debug)]
pub(crate) struct StoreFailure {
    pub(crate) kind: StoreFailureKind,
    pub(crate) source: BoxError,
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

/// Transparent: it reads as the transport's error and its causes.
impl std::error::Error for StoreFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

/// The stream's answer to a message sent, still to come.
pub(crate) type PendingStore = BoxFuture<'static, Result<Stored, StoreFailure>>;

/// Whether a stream captures a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamLookup {
    Found,
    NotFound,
    /// The lookup failed (a busy cluster electing a leader): try again.
    Unknown,
}

/// A message read back from a stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamMessage {
    pub(crate) subject: String,
    pub(crate) sequence: u64,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) payload: Bytes,
}

/// Where an ordered read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// The first matching message at or after this sequence.
    Sequence(u64),
    /// The first matching message stored at or after this time.
    Time(SystemTime),
}

/// The matching messages of a stream in order, from where the read
/// started, then each one as it is stored: the stream never ends by itself.
pub(crate) struct OrderedRead {
    /// Matching messages stored when the read started.
    pub(crate) pending: u64,
    pub(crate) messages: BoxStream<'static, Result<StreamMessage, BoxError>>,
}

/// Storing messages in streams.
pub(crate) trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Sends a message to be stored. Returns once the transport took it;
    /// the returned future resolves to the stream's answer, so many can be
    /// in flight at once.
    ///
    /// The subject is borrowed: a transport copies it where it needs it (on
    /// NATS into its shared subject buffer), and the publisher keeps it for
    /// retries and the receipt without a copy per send.
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<PendingStore, StoreFailure>>;

    /// The largest message (headers and payload) the server takes.
    fn max_payload(&self) -> usize;

    /// Whether a stream captures `subject`.
    fn stream_for_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, StreamLookup>;

    /// Waits until everything sent so far (acks included) has left.
    fn flush(&self) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Stores `messages` atomically, contiguously and in order, or none of
    /// them, and resolves to the stream's answer for the whole batch.
    ///
    /// Without an override only a single message can be stored (through
    /// [`Transport::send`]); a transport without atomic batches answers
    /// [`BatchFailureKind::Unsupported`] to more.
    fn send_batch(
        &self,
        messages: Vec<BatchMessage>,
    ) -> BoxFuture<'_, Result<StoredBatch, BatchFailure>> {
        atomic_batch::send_single(self, messages)
    }

    /// Fast-ingest batches, when the transport has them (NATS JetStream;
    /// whether a stream takes them, its first answer says).
    fn fast_batches(&self) -> Option<fast_ingest::FastBatches> {
        None
    }

    /// The last message of `stream` on a subject matching `filter`.
    fn last_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>>;

    /// The first message of `stream` on a subject matching `filter` at or
    /// after sequence `from`.
    fn next_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>>;

    /// Reads the messages of `stream` on subjects matching `filter` in
    /// order, from `from` on, leaving nothing behind on the server.
    fn read_ordered<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: ReadFrom,
    ) -> BoxFuture<'a, Result<OrderedRead, BoxError>>;
}
