//! What can go wrong publishing, and which event it was.

use std::fmt;

use crate::error::{BoxError, Error};

/// What went wrong publishing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// The subject could not be built from the event's type or key.
    #[error("invalid subject")]
    InvalidSubject,
    /// The event could not be encoded (serialization, extension names).
    #[error("event could not be encoded")]
    InvalidEvent,
    /// The encoded event (headers included) exceeds the server's limit. Nothing
    /// was sent.
    #[error("event of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Encoded size, headers included.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// The encoded headers exceed what JetStream stores (64 KiB, whatever
    /// the server's `max_payload`). Nothing was sent.
    #[error("headers of {size} bytes exceed JetStream's limit of {limit} bytes")]
    HeadersTooLarge {
        /// Size of the encoded header block.
        size: usize,
        /// JetStream's limit.
        limit: usize,
    },
    /// The event's data could not be encrypted (feature `encryption`).
    /// Nothing was sent.
    #[error("event data could not be encrypted")]
    Encryption,
    /// The event's data could not be stored in the claim check's bucket
    /// (see [`claim_check`](crate::claim_check)). Nothing was sent.
    #[error("event data could not be stored in the claim check's bucket")]
    ClaimCheck,
    /// The connection's user may not publish to this subject.
    #[error("permission denied to publish to {subject}")]
    PermissionDenied {
        /// The refused subject.
        subject: String,
    },
    /// No stream captures this subject.
    #[error("no stream captures subject {subject}")]
    NoStream {
        /// The subject without a stream.
        subject: String,
    },
    /// [`Publisher::ingest`](super::Publisher::ingest) takes the events of
    /// one stream (a fast-ingest batch belongs to one), and this call's are
    /// not: `subject` is captured by `stream`, the first event's by
    /// `first_stream` (`None`: by no stream). Nothing was sent; every event
    /// of the call has this error.
    #[error(
        "ingest takes the events of one stream: {subject} is captured by {}, the first event's subject by {}; nothing was sent",
        stream_name(.stream),
        stream_name(.first_stream)
    )]
    NotOneStream {
        /// The first subject captured otherwise than the first event's.
        subject: String,
        /// The stream capturing `subject`.
        stream: Option<String>,
        /// The stream capturing the first event's subject.
        first_stream: Option<String>,
    },
    /// Optimistic concurrency: the subject's last sequence was not the
    /// expected one. Nothing was stored.
    #[error("expected last sequence {expected} on the subject, found {actual:?}")]
    Conflict {
        /// The sequence the publish expected.
        expected: u64,
        /// The subject's actual last sequence, when the server said it.
        actual: Option<u64>,
    },
    /// No ack arrived within the retry budget: the event may or may not be
    /// stored. Publishing it again with the same id is safe: pass
    /// [`PublishError::event_id`] to [`PublishOptions::id`](super::PublishOptions::id).
    #[error("outcome unknown after {attempts} attempts")]
    OutcomeUnknown {
        /// Attempts made.
        attempts: u32,
    },
    /// The stream had no leader (or no responder) during the whole retry
    /// budget. The event was not stored.
    #[error("stream unavailable after {attempts} attempts")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
    },
    /// The server refused the event (stream limits, message too large for the
    /// stream); the source has the server's description.
    #[error("server refused the event")]
    Rejected,
}

/// Error of a publish: what went wrong ([`kind`](Self::kind)), the cause
/// ([`source`](std::error::Error::source)) and the id of the event
/// ([`event_id`](Self::event_id)).
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)]
/// # struct Paid { order: String }
/// # impl jetevents::Event for Paid { const TYPE: &'static str = "shop.order.paid.v1"; }
/// # async fn run(publisher: jetevents::publish::Publisher, paid: Paid) -> Result<(), jetevents::publish::PublishError> {
/// use jetevents::publish::{PublishErrorKind, PublishOptions};
///
/// match publisher.publish(&paid).await {
///     Err(err) if matches!(err.kind(), PublishErrorKind::OutcomeUnknown { .. }) => {
///         // Maybe stored: the same id again is stored at most once.
///         let id = err.event_id().unwrap_or_default().to_owned();
///         publisher.publish_with(&paid, PublishOptions::new().id(id)).await?;
///     }
///     other => {
///         other?;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct PublishError {
    error: Error<PublishErrorKind>,
    event_id: Option<String>,
}

impl PublishError {
    /// An error of `kind` without an underlying cause.
    pub fn new(kind: PublishErrorKind) -> Self {
        Error::new(kind).into()
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: PublishErrorKind, source: impl Into<BoxError>) -> Self {
        Error::with_source(kind, source).into()
    }

    /// What went wrong, for a caller to match on.
    pub fn kind(&self) -> &PublishErrorKind {
        self.error.kind()
    }

    /// Consumes the error, giving its kind.
    pub fn into_kind(self) -> PublishErrorKind {
        self.error.into_kind()
    }

    /// The id the event was (or would have been) sent with, also its
    /// `Nats-Msg-Id`: publishing again with it in
    /// [`PublishOptions::id`](super::PublishOptions::id) is stored at most
    /// once. `None` when the publish failed before it chose an id (an event
    /// type that makes no valid subject).
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// This error, of the event `id` unless it names one already.
    pub(super) fn for_event(mut self, id: &str) -> Self {
        if self.event_id.is_none() {
            self.event_id = Some(id.to_owned());
        }
        self
    }
}

impl From<Error<PublishErrorKind>> for PublishError {
    fn from(error: Error<PublishErrorKind>) -> Self {
        Self {
            error,
            event_id: None,
        }
    }
}

impl From<PublishErrorKind> for PublishError {
    fn from(kind: PublishErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl fmt::Debug for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishError")
            .field("kind", self.kind())
            .field("event_id", &self.event_id)
            .field("source", &std::error::Error::source(&self.error))
            .finish()
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.error)
    }
}

fn stream_name(stream: &Option<String>) -> String {
    match stream {
        Some(name) => format!("stream {name}"),
        None => "no stream".to_owned(),
    }
}

/// The `error.type` attribute of a failed publish.
pub(super) fn error_type(kind: &PublishErrorKind) -> &'static str {
    match kind {
        PublishErrorKind::InvalidSubject => "invalid_subject",
        PublishErrorKind::InvalidEvent => "invalid_event",
        PublishErrorKind::PayloadTooLarge { .. } => "payload_too_large",
        PublishErrorKind::HeadersTooLarge { .. } => "headers_too_large",
        PublishErrorKind::Encryption => "encryption",
        PublishErrorKind::ClaimCheck => "claim_check",
        PublishErrorKind::PermissionDenied { .. } => "permission_denied",
        PublishErrorKind::NoStream { .. } => "no_stream",
        PublishErrorKind::NotOneStream { .. } => "not_one_stream",
        PublishErrorKind::Conflict { .. } => "conflict",
        PublishErrorKind::OutcomeUnknown { .. } => "outcome_unknown",
        PublishErrorKind::Unavailable { .. } => "unavailable",
        PublishErrorKind::Rejected => "rejected",
    }
}
