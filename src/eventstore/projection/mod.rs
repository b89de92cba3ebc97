//! Projections: read models fed by an aggregate type's events, each event
//! applied once.
//!
//! A [`Projection`] applies events to its read model (its `Model`: a SQL
//! connection inside a transaction, or any value of yours). A
//! [`ProjectionRunner`] follows every instance of the aggregate type from
//! the checkpoint (the stream sequence of the last applied event) through
//! an ordered consumer, and hands each batch to a [`Checkpoints`] store,
//! which applies the events after its checkpoint and moves it:
//!
//! - [`SqliteCheckpoints`] (feature `sqlite`): the checkpoint is a row
//!   written in the same transaction as the read model's rows, so a runner
//!   stopped at any point leaves either the whole batch and its checkpoint
//!   or neither: every event is applied exactly once.
//! - [`KvCheckpoints`]: the checkpoint in a KV bucket, moved by
//!   compare-and-set on its revision, events at or below it skipped. A
//!   runner stopped between applying a batch and moving the checkpoint
//!   applies that batch again: the model must tolerate it (idempotent
//!   writes, or a model rebuilt in memory at start).
//!
//! With a [`Lease`], one runner per projection applies events across
//! instances; the others stand by and take over when its lease expires.
//! [`ProjectionRunner::rebuild`] clears the read model and the checkpoint;
//! [`ProjectionRunner::progress`] reports the checkpoint and the lag.

mod checkpoints;
mod error;
mod kv;
mod lease;
mod runner;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::future::Future;

pub use checkpoints::Checkpoints;
pub use error::{ProjectionError, ProjectionErrorKind};
pub use kv::KvCheckpoints;
pub use lease::Lease;
pub use runner::{Progress, ProjectionRunner};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteCheckpoints;
/// The `sqlx` these checkpoints are built on, so a projection writes its
/// rows with the same version.
#[cfg(feature = "sqlite")]
pub use sqlx;

use super::Aggregate;
use crate::error::BoxError;

/// One stored event of an aggregate, as a projection sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Projected<A: Aggregate> {
    /// Its stream sequence (the checkpoint once it is applied).
    pub sequence: u64,
    /// The aggregate instance's key.
    pub key: String,
    /// Its aggregate version.
    pub version: u64,
    /// The event.
    pub event: A::Event,
}

impl<A: Aggregate> Projected<A> {
    /// Event `event` of instance `key` at `version`, stored at `sequence`.
    pub fn new(
        sequence: u64,
        key: impl Into<String>,
        version: u64,
        event: A::Event,
    ) -> Projected<A> {
        Projected {
            sequence,
            key: key.into(),
            version,
            event,
        }
    }
}

/// A read model of one aggregate type.
///
/// `apply` writes one event into the model; `clear` empties it for a
/// rebuild. Both get the model from the [`Checkpoints`] store, which
/// decides around them when the checkpoint moves (for SQLite, in the same
/// transaction).
///
/// ```
/// # use jetevents::eventstore::Aggregate;
/// use jetevents::eventstore::projection::{Projected, Projection};
/// # #[derive(Default)] struct Account;
/// # #[derive(serde::Serialize, serde::Deserialize)] enum AccountEvent {
/// #     #[serde(rename = "deposited.v1")] Deposited { amount: u64 } }
/// # #[derive(Debug, thiserror::Error)] #[error("no")] struct No;
/// # impl Aggregate for Account {
/// #     const KIND: &'static str = "bank.account";
/// #     type Event = AccountEvent; type Command = (); type Error = No;
/// #     fn apply(&mut self, _: &AccountEvent) {}
/// #     fn handle(&self, _: &()) -> Result<Vec<AccountEvent>, No> { Ok(vec![]) }
/// # }
///
/// /// Total deposits per account, in memory.
/// struct Totals;
///
/// impl Projection for Totals {
///     type Aggregate = Account;
///     type Model = std::collections::HashMap<String, u64>;
///
///     async fn apply(
///         &mut self,
///         model: &mut Self::Model,
///         event: &Projected<Account>,
///     ) -> Result<(), jetevents::error::BoxError> {
///         let AccountEvent::Deposited { amount } = event.event;
///         *model.entry(event.key.clone()).or_default() += amount;
///         Ok(())
///     }
///
///     async fn clear(&mut self, model: &mut Self::Model) -> Result<(), jetevents::error::BoxError> {
///         model.clear();
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + 'static {
    /// The aggregate type whose events it reads.
    type Aggregate: Aggregate;

    /// What it writes to.
    type Model: ?Sized + Send;

    /// Writes one event into the model.
    fn apply(
        &mut self,
        model: &mut Self::Model,
        event: &Projected<Self::Aggregate>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Empties the model, before a rebuild.
    fn clear(
        &mut self,
        model: &mut Self::Model,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}
