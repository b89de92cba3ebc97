//! Looking at sagas from outside: the running ones, their state and their
//! pending timeouts, and the finished ones by correlation id.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use super::error::{SagaError, SagaErrorKind};
use super::record::{PendingTimeout, SagaRecord, SagaStatus};
use super::store::{key_of, Store};
use crate::client::Client;

/// One saga as stored.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SagaSummary<S> {
    /// The saga's correlation id.
    pub correlation_id: String,
    /// Running, completed or compensated.
    pub status: SagaStatus,
    /// The state after the last transition.
    pub state: S,
    /// Timers asked for and not fired or cancelled, by name.
    pub pending_timeouts: BTreeMap<String, PendingTimeout>,
    /// When the start event was applied.
    pub started_at: DateTime<Utc>,
    /// When the last transition was applied.
    pub updated_at: DateTime<Utc>,
}

impl<S> From<SagaRecord<S>> for SagaSummary<S> {
    fn from(record: SagaRecord<S>) -> Self {
        Self {
            correlation_id: record.correlation_id,
            status: record.status,
            state: record.state,
            pending_timeouts: record.timeouts,
            started_at: record.started_at,
            updated_at: record.updated_at,
        }
    }
}

/// The sagas of one definition (state type `S`).
///
/// ```no_run
/// # async fn f(client: jetevents::client::Client) -> Result<(), jetevents::saga::SagaError> {
/// let sagas = jetevents::saga::Sagas::<u32>::open(&client, "order").await?;
/// for saga in sagas.running().await? {
///     println!("{} {:?} {:?}", saga.correlation_id, saga.state, saga.pending_timeouts);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Sagas<S> {
    store: Store,
    _state: std::marker::PhantomData<fn() -> S>,
}

impl<S: DeserializeOwned> Sagas<S> {
    /// The sagas named `saga`.
    pub async fn open(client: &Client, saga: &str) -> Result<Self, SagaError> {
        let jetstream = client
            .jetstream()
            .ok_or_else(|| SagaError::new(SagaErrorKind::NeedsNats))?;
        Ok(Self {
            store: Store::open(jetstream, saga).await?,
            _state: std::marker::PhantomData,
        })
    }

    /// The sagas started and not finished.
    pub async fn running(&self) -> Result<Vec<SagaSummary<S>>, SagaError> {
        let mut running = Vec::new();
        for key in self.store.running_keys().await? {
            if let Some((record, _)) = self.store.load::<S>(&key).await? {
                if record.status == SagaStatus::Running {
                    running.push(record.into());
                }
            }
        }
        Ok(running)
    }

    /// The saga of `correlation_id`, running or finished.
    pub async fn get(&self, correlation_id: &str) -> Result<Option<SagaSummary<S>>, SagaError> {
        let key = key_of(correlation_id);
        if let Some((record, _)) = self.store.load::<S>(&key).await? {
            return Ok(Some(record.into()));
        }
        Ok(self.store.archived::<S>(&key).await?.map(Into::into))
    }
}
