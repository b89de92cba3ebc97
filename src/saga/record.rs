//! What the state bucket holds per saga: the user's state and what the host
//! needs to apply each event once and to compensate.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a saga is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SagaStatus {
    /// Started, not finished.
    Running,
    /// Finished by a transition that completed it.
    Completed,
    /// Failed (or timed out): its compensations were sent.
    Compensated {
        /// Why it failed, as the failing transition said.
        reason: String,
    },
}

/// An event or command a transition sends, kept until it is sent: typed
/// events become this when the transition is made, so a host that dies
/// before sending them sends them again (same id) after a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub id: String,
    /// The id of the event whose transition sent it.
    pub cause: String,
    pub event_type: String,
    pub key: Option<String>,
    pub data: serde_json::Value,
}

/// Something to send once the transition is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Pending {
    Publish(StoredEvent),
    Schedule {
        timer: String,
        at: DateTime<Utc>,
        event: StoredEvent,
    },
    Cancel {
        timer: String,
    },
}

/// A timeout asked for and not fired or cancelled yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTimeout {
    /// When it fires.
    pub at: DateTime<Utc>,
    /// The id of the timeout event: a fired event with another id is stale.
    pub event_id: String,
}

/// One saga in the bucket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SagaRecord<S> {
    pub correlation_id: String,
    pub status: SagaStatus,
    pub state: S,
    /// Ids of the events applied: a redelivered one is not applied again.
    pub applied: Vec<String>,
    /// Compensating commands in the order registered (sent in reverse).
    pub compensations: Vec<StoredEvent>,
    pub timeouts: BTreeMap<String, PendingTimeout>,
    /// Stored with the transition, sent after it, then cleared.
    pub outbox: Vec<Pending>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<S> SagaRecord<S> {
    pub fn new(correlation_id: &str, state: S) -> Self {
        let now = Utc::now();
        Self {
            correlation_id: correlation_id.to_owned(),
            status: SagaStatus::Running,
            state,
            applied: Vec::new(),
            compensations: Vec::new(),
            timeouts: BTreeMap::new(),
            outbox: Vec::new(),
            started_at: now,
            updated_at: now,
        }
    }
}
