//! What can go wrong running a projection.

/// Why a projection stopped.
pub type ProjectionError = crate::Error<ProjectionErrorKind>;

/// What went wrong in a projection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionErrorKind {
    /// Reading the events from the stream failed.
    #[error("reading the events failed")]
    Read,
    /// A stored event is not one of the aggregate's.
    #[error("event at stream sequence {sequence} does not decode")]
    Undecodable {
        /// Its stream sequence.
        sequence: u64,
    },
    /// The projection refused an event; the batch was not committed.
    #[error("the projection failed to apply the event at stream sequence {sequence}")]
    Apply {
        /// The event's stream sequence.
        sequence: u64,
    },
    /// Reading or writing the checkpoint (or the read model) failed.
    #[error("the checkpoint store failed")]
    Checkpoint,
    /// Someone else moved the checkpoint since it was read: another runner
    /// is applying events to this projection.
    #[error("another runner moved the checkpoint")]
    CheckpointMoved,
    /// The lease bucket failed.
    #[error("the lease bucket failed")]
    Lease,
    /// The runner held the lease and lost it (it could not renew it in
    /// time); it stands by again.
    #[error("the lease was lost")]
    LeaseLost,
}
