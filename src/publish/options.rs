//! The options of one publish and the receipt of a stored event.

use crate::codec::Encoding;

/// What the server said about a stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The event's id (also its `Nats-Msg-Id`).
    pub event_id: String,
    /// The subject it was published on.
    pub subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// The server had this id already (within the duplicate window) and did
    /// not store it again: an earlier attempt succeeded.
    pub duplicate: bool,
}

/// Options of one publish, as a small builder.
///
/// ```
/// use jetevents::publish::PublishOptions;
/// use jetevents::codec::Encoding;
///
/// let options = PublishOptions::new()
///     .id("order-42-paid")
///     .correlation_id("order-42")
///     .metadata("tenant", "acme")
///     .encoding(Encoding::Structured)
///     .expected_last_subject_sequence(7);
/// ```
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    pub(super) id: Option<String>,
    pub(super) key: Option<String>,
    pub(super) correlation_id: Option<String>,
    pub(super) causation_id: Option<String>,
    pub(super) metadata: Vec<(String, String)>,
    pub(super) encoding: Option<Encoding>,
    pub(super) expected_last_subject_sequence: Option<u64>,
}

impl PublishOptions {
    /// No options: the defaults of the client's configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event's id (also its `Nats-Msg-Id`) instead of a new UUIDv7
    /// or a derived follow-up id: the server stores one event per id within
    /// the stream's duplicate window. Use it to publish again after
    /// [`OutcomeUnknown`](super::PublishErrorKind::OutcomeUnknown), with the
    /// error's [`event_id`](super::PublishError::event_id), or to key an event by a
    /// business id. It must be non-empty and free of control characters,
    /// otherwise the publish fails with [`PublishErrorKind::InvalidEvent`](super::PublishErrorKind::InvalidEvent)
    /// and nothing is sent. For [`Publisher::publish_envelope`](super::Publisher::publish_envelope) it replaces
    /// the envelope's id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Overrides the event's own key (last subject token, `partitionkey`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the `correlationid` extension (the conversation this event is part of).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the `causationid` extension (the id of the event that caused this one).
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a free-form metadata extension. Names are CloudEvents extension
    /// names: lower-case letters and digits.
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    /// Chooses binary (default) or structured encoding for this event.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// Optimistic concurrency: store only if the last event on this subject has
    /// this stream sequence (0: the subject must be empty).
    pub fn expected_last_subject_sequence(mut self, sequence: u64) -> Self {
        self.expected_last_subject_sequence = Some(sequence);
        self
    }
}
