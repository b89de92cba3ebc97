//! The error of building or running a partitioned group.

use crate::error::Error;

/// What went wrong in a partitioned group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartitionedErrorKind {
    /// The settings are inconsistent (no partitions, no stream, a stream
    /// name or event filter that cannot be partitioned, ...).
    InvalidConfig(String),
    /// The stream does not partition its subjects into the configured number
    /// of partitions (its subject transform is missing or uses another count).
    NotPartitioned {
        /// The stream.
        stream: String,
        /// The partitions the group expects.
        partitions: u16,
    },
    /// The consumer of a partition could not be built (see the source).
    Consumer,
    /// The membership bucket could not be opened or created.
    Membership,
}

impl std::fmt::Display for PartitionedErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidConfig(reason) => {
                write!(f, "invalid partitioned group configuration: {reason}")
            }
            Self::NotPartitioned { stream, partitions } => write!(
                f,
                "stream {stream} does not map its subjects to {partitions} partitions"
            ),
            Self::Consumer => f.write_str("a partition's consumer could not be built"),
            Self::Membership => f.write_str("the group's membership bucket is unavailable"),
        }
    }
}

/// Error of building or running a partitioned group.
pub type PartitionedError = Error<PartitionedErrorKind>;
