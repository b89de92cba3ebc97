//! The [`ProjectionRunner`]: follows an aggregate type's events from the
//! checkpoint and commits them batch by batch.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use opentelemetry::KeyValue;
use tokio::sync::watch;

use super::{Checkpoints, Lease, Projection, ProjectionError, ProjectionErrorKind};
use crate::eventstore::read::StoredEvent;
use crate::eventstore::{Aggregate, EventStore};
use crate::semconv::PROJECTION_NAME;
use crate::transport::ReadFrom;
use crate::Error;

/// Where a projection stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Stream sequence of the last applied event (0: none).
    pub checkpoint: u64,
    /// Stream sequence of the aggregate type's last event when the
    /// checkpoint last moved (0: none).
    pub last_sequence: u64,
    /// Whether this runner applies events now (without a lease: while it
    /// runs; with one: while it holds it).
    pub active: bool,
}

impl Progress {
    /// How far the read model is behind the stream, in stream sequences
    /// (the last sequence minus the checkpoint).
    pub fn lag(&self) -> u64 {
        self.last_sequence.saturating_sub(self.checkpoint)
    }
}

/// Runs a [`Projection`] over every instance of its aggregate type, its
/// checkpoint kept by a [`Checkpoints`] store.
///
/// ```no_run
/// # use jetevents::eventstore::{Aggregate, EventStore};
/// # use jetevents::eventstore::projection::*;
/// # async fn run<P: Projection<Model = std::collections::HashMap<String, u64>>>(
/// #     store: EventStore, bucket: async_nats::jetstream::kv::Store, projection: P,
/// # ) -> Result<(), ProjectionError> {
/// let checkpoints = KvCheckpoints::new(bucket, "totals", Default::default());
/// let mut runner = ProjectionRunner::new(store, projection, checkpoints);
/// let progress = runner.progress();
/// runner.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// println!("lag {}", progress.borrow().lag());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ProjectionRunner<P, C> {
    store: EventStore,
    name: String,
    projection: P,
    checkpoints: C,
    lease: Option<Lease>,
    batch: usize,
    progress: watch::Sender<Progress>,
}

/// The last segment of `P`'s type path (`Totals` for `my_app::Totals`).
fn default_name<P>() -> String {
    let path = std::any::type_name::<P>();
    let before_generics = path.split('<').next().unwrap_or(path);
    before_generics
        .rsplit("::")
        .next()
        .unwrap_or(before_generics)
        .to_owned()
}

fn read_error(err: impl Into<crate::error::BoxError>) -> ProjectionError {
    Error::with_source(ProjectionErrorKind::Read, err)
}

impl<P, C> ProjectionRunner<P, C>
where
    P: Projection,
    C: Checkpoints<P>,
{
    /// Runs `projection` over `store`'s events, the checkpoint in
    /// `checkpoints`; at most 100 events per batch.
    pub fn new(store: EventStore, projection: P, checkpoints: C) -> ProjectionRunner<P, C> {
        ProjectionRunner {
            store,
            name: default_name::<P>(),
            projection,
            checkpoints,
            lease: None,
            batch: 100,
            progress: watch::Sender::new(Progress::default()),
        }
    }

    /// Names it in its metrics (`jetevents.projection.name`); by default the
    /// projection's Rust type name.
    pub fn name(mut self, name: impl Into<String>) -> ProjectionRunner<P, C> {
        self.name = name.into();
        self
    }

    /// Applies events only while holding `lease`, standing by otherwise.
    pub fn with_lease(mut self, lease: Lease) -> ProjectionRunner<P, C> {
        self.lease = Some(lease);
        self
    }

    /// At most `events` per batch (one checkpoint write each; at least 1).
    pub fn batch_size(mut self, events: usize) -> ProjectionRunner<P, C> {
        self.batch = events.max(1);
        self
    }

    /// The checkpoint, the lag and whether it is active, updated after
    /// every batch.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The checkpoint store (and through it, the model).
    pub fn checkpoints(&self) -> &C {
        &self.checkpoints
    }

    /// The checkpoint and the stream's last sequence now.
    pub async fn lag(&mut self) -> Result<Progress, ProjectionError> {
        let checkpoint = self.checkpoints.checkpoint().await?;
        self.report(checkpoint).await?;
        Ok(*self.progress.borrow())
    }

    /// Clears the read model and sets the checkpoint to 0, so the next
    /// [`run`](Self::run) applies every event again. With a lease, waits
    /// for it first (no runner may apply events meanwhile).
    pub async fn rebuild(&mut self) -> Result<(), ProjectionError> {
        let held = match &self.lease {
            Some(lease) => Some(lease.acquire().await?),
            None => None,
        };
        let reset = self.checkpoints.reset(&mut self.projection).await;
        if let (Some(lease), Some(revision)) = (&self.lease, held) {
            lease.release(revision).await?;
        }
        reset?;
        self.report(0).await
    }

    /// Applies the events after the checkpoint, then new ones as they are
    /// stored, until `shutdown` completes or an error stops it. With a
    /// lease, stands by until it holds it, and again whenever it loses it.
    pub async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProjectionError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let Some(lease) = self.lease.clone() else {
                self.progress.send_modify(|progress| progress.active = true);
                let outcome = tokio::select! {
                    outcome = self.follow() => outcome,
                    () = &mut shutdown => Ok(()),
                };
                self.progress
                    .send_modify(|progress| progress.active = false);
                return outcome;
            };
            let revision = tokio::select! {
                revision = lease.acquire() => AtomicU64::new(revision?),
                () = &mut shutdown => return Ok(()),
            };
            self.progress.send_modify(|progress| progress.active = true);
            let outcome = tokio::select! {
                outcome = self.follow() => outcome,
                lost = lease.keep(&revision) => Err(lost),
                () = &mut shutdown => Ok(()),
            };
            self.progress
                .send_modify(|progress| progress.active = false);
            match outcome {
                Err(err) if matches!(err.kind(), ProjectionErrorKind::LeaseLost) => continue,
                outcome => {
                    lease.release(revision.load(Ordering::Relaxed)).await?;
                    return outcome;
                }
            }
        }
    }

    /// The filter selecting every instance of the aggregate type.
    fn filter(&self) -> Result<String, ProjectionError> {
        self.store.type_filter::<P::Aggregate>().map_err(read_error)
    }

    async fn report(&mut self, checkpoint: u64) -> Result<(), ProjectionError> {
        let last = self.store.tip(&self.filter()?).await.map_err(read_error)?;
        self.progress.send_modify(|progress| {
            progress.checkpoint = checkpoint;
            progress.last_sequence = last.sequence;
        });
        let lag = self.progress.borrow().lag();
        self.store
            .client()
            .metrics()
            .projection_lag
            .record(lag, &[KeyValue::new(PROJECTION_NAME, self.name.clone())]);
        Ok(())
    }

    /// Commits batches from the checkpoint on, until the consumer ends.
    async fn follow(&mut self) -> Result<(), ProjectionError> {
        let filter = self.filter()?;
        let from = self.checkpoints.checkpoint().await?;
        self.report(from).await?;
        let read = self
            .store
            .client()
            .transport()
            .read_ordered(self.store.stream(), &filter, ReadFrom::Sequence(from + 1))
            .await
            .map_err(read_error)?;
        let upcasts = <P::Aggregate as Aggregate>::upcasts();
        let mut batches = read.messages.ready_chunks(self.batch);
        while let Some(batch) = batches.next().await {
            let mut events = Vec::with_capacity(batch.len());
            for message in batch {
                let message = message.map_err(read_error)?;
                let sequence = message.sequence;
                let stored = StoredEvent::new(sequence, message.headers, message.payload);
                let event = stored
                    .project::<P::Aggregate>(&message.subject, &upcasts)
                    .map_err(|err| {
                        Error::with_source(ProjectionErrorKind::Undecodable { sequence }, err)
                    })?;
                events.push(event);
            }
            let checkpoint = self
                .checkpoints
                .commit(&mut self.projection, &events)
                .await?;
            self.report(checkpoint).await?;
        }
        Ok(())
    }
}
