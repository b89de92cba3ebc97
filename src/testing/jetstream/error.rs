//! The engine's errors, one kind enum per operation. Where the real server
//! answers with a JetStream API error, the `Display` text is the server's
//! description (its error code in the variant's doc), so a conformance suite
//! can compare the two.

use std::fmt;

use crate::Error;

/// An error managing streams and consumers, or waiting for a delivery.
pub type MemoryError = Error<MemoryErrorKind>;

/// What went wrong managing streams and consumers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryErrorKind {
    /// No stream of that name (server error 10059).
    StreamNotFound,
    /// No consumer of that name on the stream (server error 10014).
    ConsumerNotFound,
    /// A stream of that name exists with another configuration (10058).
    StreamNameInUse,
    /// The stream's subjects overlap another stream's (10065).
    SubjectsOverlap,
    /// The stream or durable name is empty or contains `.`, `*`, `>`,
    /// whitespace or a path separator (10103 for durables).
    InvalidName(String),
    /// A stream subject or consumer filter is not a valid subject.
    InvalidSubject(String),
    /// `backoff` has more steps than `max_deliver` allows (10116).
    MaxDeliverBackoff,
    /// Two of a consumer's filter subjects overlap (10138).
    OverlappingFilterSubjects,
    /// The update changes a setting the server keeps fixed (10012, its text).
    NotUpdatable(&'static str),
}

impl fmt::Display for MemoryErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StreamNotFound => f.write_str("stream not found"),
            Self::ConsumerNotFound => f.write_str("consumer not found"),
            Self::StreamNameInUse => {
                f.write_str("stream name already in use with a different configuration")
            }
            Self::SubjectsOverlap => f.write_str("subjects overlap with an existing stream"),
            Self::InvalidName(name) => write!(
                f,
                "invalid name {name:?}: names can not be empty or contain '.', '*', '>'"
            ),
            Self::InvalidSubject(subject) => write!(f, "invalid subject {subject:?}"),
            Self::MaxDeliverBackoff => {
                f.write_str("max deliver is required to be > length of backoff values")
            }
            Self::OverlappingFilterSubjects => {
                f.write_str("consumer subject filters cannot overlap")
            }
            Self::NotUpdatable(what) => write!(f, "{what} can not be updated"),
        }
    }
}

/// An error publishing to the engine.
pub type PublishError = Error<PublishErrorKind>;

/// Why the engine refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishErrorKind {
    /// No stream captures the subject. The server does not answer at all (no
    /// responders), which async-nats reports with this text.
    NoStream,
    /// The subject is empty, has empty tokens or wildcards.
    InvalidSubject,
    /// `Nats-Expected-Stream` names another stream (10060).
    StreamNameMismatch,
    /// `Nats-Expected-Last-Sequence` or `Nats-Expected-Last-Subject-Sequence`
    /// did not match; `actual` is the stream's (or subject's) last sequence
    /// (10071).
    WrongLastSequence {
        /// The sequence the stream actually had.
        actual: u64,
    },
    /// `Nats-Expected-Last-Msg-Id` did not match the last stored message's id
    /// (10070).
    WrongLastMsgId {
        /// The id of the last stored message (empty when it had none).
        actual: String,
    },
    /// `Nats-Expected-Last-Subject-Sequence-Subject` without the sequence
    /// header (10193).
    MissingLastSubjectSequence,
    /// Headers and payload together exceed `max_payload`; async-nats refuses
    /// such a message before sending it, with this text.
    MaxPayloadExceeded {
        /// The engine's `max_payload`.
        limit: usize,
        /// The message's size: header block plus payload.
        size: usize,
    },
}

impl fmt::Display for PublishErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream found for given subject"),
            Self::InvalidSubject => f.write_str("invalid subject"),
            Self::StreamNameMismatch => f.write_str("expected stream does not match"),
            Self::WrongLastSequence { actual } => write!(f, "wrong last sequence: {actual}"),
            Self::WrongLastMsgId { actual } => write!(f, "wrong last msg ID: {actual}"),
            Self::MissingLastSubjectSequence => {
                f.write_str("missing sequence for expected last sequence per subject")
            }
            Self::MaxPayloadExceeded { limit, size } => write!(
                f,
                "max payload size exceeded: Payload size limit of {limit} exceeded by message size of {size}"
            ),
        }
    }
}

/// An error settling a delivery (ack, nak, in progress, term).
pub type AckError = Error<AckErrorKind>;

/// Why a settlement could not reach its consumer. Settling a message that is
/// no longer pending is not an error: the server ignores it too.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckErrorKind {
    /// The stream was deleted.
    StreamNotFound,
    /// The consumer was deleted.
    ConsumerNotFound,
}

impl fmt::Display for AckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StreamNotFound => f.write_str("stream not found"),
            Self::ConsumerNotFound => f.write_str("consumer not found"),
        }
    }
}
