//! The error of storing or fetching an event's claim-checked data.
//!
//! No kind carries data: a message names at most a bucket or an object.

use std::fmt;

use crate::Error;

/// Error of storing, fetching or cleaning up claim-checked data.
pub type ClaimCheckError = Error<ClaimCheckErrorKind>;

/// Why claim-checked data could not be stored, fetched or cleaned up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimCheckErrorKind {
    /// The object the event refers to is not in the bucket (deleted, or
    /// removed by a cleanup too early).
    ObjectMissing {
        /// The object's name.
        object: String,
    },
    /// The object's bytes do not have the digest the event carries: it was
    /// replaced or corrupted.
    DigestMismatch {
        /// The object's name.
        object: String,
    },
    /// A claim-check extension is missing or not in its format.
    Malformed(&'static str),
    /// The Object Store bucket could not be read or written (transient).
    Store(String),
    /// The client runs on the in-memory JetStream, which has no Object Store.
    NeedsNats,
}

impl fmt::Display for ClaimCheckErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ObjectMissing { object } => {
                write!(f, "claim-checked object {object:?} is missing")
            }
            Self::DigestMismatch { object } => write!(
                f,
                "claim-checked object {object:?} does not match the event's digest"
            ),
            Self::Malformed(what) => write!(f, "malformed claim-check extension: {what}"),
            Self::Store(what) => write!(f, "object store {what} unavailable"),
            Self::NeedsNats => f.write_str("claim checks need a NATS connection"),
        }
    }
}
