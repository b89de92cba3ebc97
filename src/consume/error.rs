//! The error of building or running a consumer.

use crate::error::Error;

/// What went wrong building or running a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeErrorKind {
    /// The builder's settings are inconsistent (no handlers, an invalid group
    /// name or event type, an upcast without a handler for its target, ...).
    InvalidConfig(String),
    /// The event stream does not exist (or no stream captures the filters).
    StreamNotFound(String),
    /// The dead-letter stream could not be created.
    DeadLetterStream,
    /// The durable consumer could not be created or updated (e.g. a setting
    /// the server cannot change on an existing consumer).
    CreateConsumer,
    /// The connection's user may not make a JetStream API request the
    /// consumer needs (the server refused `subject`).
    PermissionDenied {
        /// The refused API subject.
        subject: String,
    },
    /// Subscribing failed: an ephemeral consumer's queue subscription, or the
    /// durable runner's reply inbox (the connection is closed).
    Subscribe,
    /// The server did not answer (disconnected, timeout, JetStream not
    /// ready). The runner retries this itself; only `build` returns it.
    Unavailable,
}

impl std::fmt::Display for ConsumeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidConfig(reason) => write!(f, "invalid consumer configuration: {reason}"),
            Self::StreamNotFound(stream) => write!(f, "stream not found: {stream}"),
            Self::DeadLetterStream => f.write_str("dead-letter stream could not be created"),
            Self::CreateConsumer => f.write_str("durable consumer could not be created"),
            Self::PermissionDenied { subject } => write!(f, "permission denied for {subject}"),
            Self::Subscribe => f.write_str("subscribe failed"),
            Self::Unavailable => f.write_str("server unavailable"),
        }
    }
}

/// Error of building or running a consumer.
pub type ConsumeError = Error<ConsumeErrorKind>;
