//! The error of running and inspecting sagas.

use std::fmt;

use crate::Error;

/// Error of the saga host and of [`Sagas`](super::Sagas).
pub type SagaError = Error<SagaErrorKind>;

/// What went wrong with a saga.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SagaErrorKind {
    /// The saga's name is not `A-Z a-z 0-9 - _`, or it has no start event.
    InvalidDefinition,
    /// The client has no NATS connection (the in-memory test client).
    NeedsNats,
    /// The state bucket could not be created, read or written.
    Store,
    /// A saga record in the bucket does not deserialize into the state type.
    Corrupt,
    /// An event, command or timeout could not be encoded or sent.
    Send,
    /// The saga's stream could not be declared (see [`Saga::consumer`](super::Saga::consumer)).
    Stream,
}

impl fmt::Display for SagaErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidDefinition => f.write_str("invalid saga definition"),
            Self::NeedsNats => f.write_str("sagas need a NATS connection"),
            Self::Store => f.write_str("saga state bucket unavailable"),
            Self::Corrupt => f.write_str("saga record does not decode"),
            Self::Send => f.write_str("could not send a saga's event, command or timeout"),
            Self::Stream => f.write_str("could not declare the saga's stream"),
        }
    }
}
