//! The [`Checkpoints`] trait: where a projection's checkpoint lives, and
//! how a batch moves it.

use std::future::Future;

use super::{Projected, Projection, ProjectionError};

/// Keeps a projection's checkpoint (the stream sequence of its last applied
/// event, 0 before the first) and owns the projection's model.
///
/// `commit` applies the events of a batch that are after the checkpoint and
/// moves the checkpoint to the last of them; how atomically is the store's
/// promise (see the [module docs](super)).
pub trait Checkpoints<P: Projection>: Send {
    /// The checkpoint as stored now.
    fn checkpoint(&mut self) -> impl Future<Output = Result<u64, ProjectionError>> + Send;

    /// Applies the events after the checkpoint and returns the new one.
    fn commit(
        &mut self,
        projection: &mut P,
        events: &[Projected<P::Aggregate>],
    ) -> impl Future<Output = Result<u64, ProjectionError>> + Send;

    /// Clears the model and sets the checkpoint back to 0.
    fn reset(
        &mut self,
        projection: &mut P,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}
