//! The errors of the event store's operations.

use super::Expected;
use crate::Error;

/// Why an append stored nothing (or may have stored it: `OutcomeUnknown`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendErrorKind {
    /// No events: an append stores at least one.
    #[error("nothing to append")]
    Empty,
    /// More events than one atomic batch takes.
    #[error("{count} events in one append; at most {limit} are stored atomically")]
    TooMany {
        /// Events asked for.
        count: usize,
        /// The server's batch limit.
        limit: usize,
    },
    /// An event whose type names another aggregate.
    #[error("event type {event_type} is not of aggregate {aggregate}")]
    WrongAggregate {
        /// The event's type.
        event_type: String,
        /// The aggregate's `{domain}.{entity}`.
        aggregate: &'static str,
    },
    /// An event that cannot be stored as it is (not serde's enum form, a
    /// bad type or key, too large).
    #[error("invalid event: {reason}")]
    InvalidEvent {
        /// What is wrong with it.
        reason: String,
    },
    /// The aggregate is not at the expected version; `actual` is its
    /// version now (0: no events).
    #[error("expected {expected:?}, but the aggregate is at version {actual}")]
    Conflict {
        /// What the append expected.
        expected: Expected,
        /// The aggregate's version.
        actual: u64,
    },
    /// The stream does not allow atomic batch publish, so a multi-event
    /// append could not be atomic.
    #[error(
        "stream {stream} does not allow atomic publish: set `allow_atomic_publish: true` in its \
         config (nats stream edit {stream} --allow-batch), or create it with EventStore::provision"
    )]
    AtomicPublishDisabled {
        /// The stream.
        stream: String,
    },
    /// No stream stores the aggregate's subjects.
    #[error("no stream stores the aggregate's subjects")]
    NoStream,
    /// No answer in time, after retries: the events may be stored. Append
    /// again with [`AppendOptions::id`](super::AppendOptions::id) set to
    /// `append_id`: they are stored at most once.
    #[error("outcome unknown for append {append_id}")]
    OutcomeUnknown {
        /// The append's id.
        append_id: String,
    },
    /// The append id was used before for other events.
    #[error("append id {append_id} was used for other events")]
    IdReused {
        /// The append's id.
        append_id: String,
    },
    /// The server refused it for another reason, or reading failed.
    #[error("append failed")]
    Other,
}

/// Error of [`EventStore::append`](super::EventStore::append).
pub type AppendError = Error<AppendErrorKind>;

/// Why an aggregate could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadErrorKind {
    /// Reading the stream or the snapshot bucket failed.
    #[error("reading the aggregate failed")]
    Read,
    /// A stored event is not one of the aggregate's events.
    #[error("event #{sequence} does not decode: {reason}")]
    Undecodable {
        /// Its stream sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// Stored versions are not consecutive: events were written around
    /// the event store, or deleted.
    #[error("event #{sequence} has version {found}, expected {expected}")]
    VersionGap {
        /// Its stream sequence.
        sequence: u64,
        /// The version it carries (0: none).
        found: u64,
        /// The version that should follow.
        expected: u64,
    },
}

/// Error of [`EventStore::load`](super::EventStore::load).
pub type LoadError = Error<LoadErrorKind>;

/// Why a command did not produce stored events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandErrorKind<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command refused: {0}")]
    Refused(E),
    /// Other writers won every attempt.
    #[error("still conflicting after {attempts} attempts")]
    Conflict {
        /// Attempts made.
        attempts: u32,
    },
    /// Loading the aggregate failed.
    #[error("load failed: {0}")]
    Load(LoadErrorKind),
    /// Appending the events failed.
    #[error("append failed: {0}")]
    Append(AppendErrorKind),
}

/// Error of [`EventStore::execute`](super::EventStore::execute).
pub type CommandError<E> = Error<CommandErrorKind<E>>;
