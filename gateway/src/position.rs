//! Event ids that are resume positions: `{stream}.{epoch}.{sequence}`.
//!
//! The epoch is the stream's creation time (Unix nanoseconds): a stream deleted
//! and recreated under the same name restarts its sequences, and only the epoch
//! tells a position in the old stream from one in the new. Stream names cannot
//! contain `.`, so the id splits unambiguously.

use std::fmt;
use std::str::FromStr;

/// A position in one incarnation of a stream: what an SSE `id` and a WebSocket
/// resume token carry.
///
/// ```
/// use jetevents_gateway::Position;
/// let position: Position = "ORDERS.1700000000000000000.42".parse().unwrap();
/// assert_eq!(position.sequence, 42);
/// assert_eq!(position.to_string(), "ORDERS.1700000000000000000.42");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Position {
    /// The stream's name.
    pub stream: String,
    /// The stream's creation time, Unix nanoseconds.
    pub epoch: i128,
    /// The stream sequence of the event (0: before the first event).
    pub sequence: u64,
}

impl Position {
    /// The position of `sequence` in the stream `stream` created at `epoch`.
    pub fn new(stream: impl Into<String>, epoch: i128, sequence: u64) -> Self {
        Self {
            stream: stream.into(),
            epoch,
            sequence,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.stream, self.epoch, self.sequence)
    }
}

/// A string that is not a [`Position`].
#[derive(Debug, thiserror::Error)]
#[error("not an event id of this gateway: {0:?}")]
pub struct InvalidPosition(String);

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPosition(id.to_owned());
        let mut parts = id.rsplitn(3, '.');
        let sequence = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(invalid)?;
        let epoch = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(invalid)?;
        let stream = parts.next().filter(|s| !s.is_empty()).ok_or_else(invalid)?;
        Ok(Self::new(stream, epoch, sequence))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let position = Position::new("S", -5, 7);
        assert_eq!(position.to_string().parse::<Position>().unwrap(), position);
        for bad in ["", "S.1", "S.x.1", ".1.2", "S.1.-2"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }
}
