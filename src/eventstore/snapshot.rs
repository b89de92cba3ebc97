//! Snapshots: an aggregate's state at a version, kept in a KV bucket so a
//! load replays only the events after it.
//!
//! A snapshot records the state, its version, the stream sequence of its
//! last event and [`Aggregate::SNAPSHOT_SCHEMA`]. A snapshot of another
//! schema, or one that does not deserialize, is ignored (the state is
//! replayed from the events), never misread.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::bucket::Bucket;
use super::read::Tip;
use super::Aggregate;
use crate::error::BoxError;
use crate::nats::jetstream::kv;

/// When [`EventStore::execute`](super::EventStore::execute) saves a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotPolicy {
    /// Only when asked ([`Snapshots::save`]).
    Manual,
    /// When an append takes the version across a multiple of `n`.
    EveryEvents(u64),
}

/// Snapshots of aggregates in one KV bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Snapshots {
    bucket: Bucket,
    policy: SnapshotPolicy,
}

/// A snapshot as stored.
#[derive(Serialize, serde::Deserialize)]
struct Stored<S> {
    schema: u32,
    version: u64,
    sequence: u64,
    state: S,
}

/// Only the schema, read first so a snapshot of another shape is never
/// deserialized as this one.
#[derive(serde::Deserialize)]
struct Schema {
    schema: u32,
}

impl Snapshots {
    /// Snapshots in `bucket`, saved by `policy`.
    pub fn new(bucket: kv::Store, policy: SnapshotPolicy) -> Snapshots {
        Snapshots {
            bucket: Bucket::Nats(Box::new(bucket)),
            policy,
        }
    }

    /// Snapshots in the KV bucket `bucket` of `client`'s JetStream (created
    /// if missing), saved by `policy`. On a client of the in-memory
    /// JetStream ([`crate::testing`]) the bucket is in memory too.
    pub async fn provision(
        client: &crate::client::Client,
        bucket: &str,
        policy: SnapshotPolicy,
    ) -> Result<Snapshots, super::ProvisionError> {
        let config = async_nats::jetstream::kv::Config {
            bucket: bucket.to_owned(),
            ..Default::default()
        };
        Ok(Snapshots {
            bucket: Bucket::provision(client, config, false).await?,
            policy,
        })
    }

    /// The policy.
    pub fn policy(&self) -> SnapshotPolicy {
        self.policy
    }

    /// The KV key of an instance: the kind, then the key in hex (KV keys
    /// take fewer characters than subjects).
    fn key<A: Aggregate>(key: &str) -> String {
        let mut out = String::with_capacity(A::KIND.len() + 1 + 2 * key.len());
        out.push_str(A::KIND);
        out.push('.');
        for byte in key.bytes() {
            // Writing to a String cannot fail.
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    /// Saves `state` of `key` at `version`, whose last event is stream
    /// sequence `sequence`.
    pub async fn save<A: Aggregate + Serialize>(
        &self,
        key: &str,
        state: &A,
        version: u64,
        sequence: u64,
    ) -> Result<(), BoxError> {
        let stored = Stored {
            schema: A::SNAPSHOT_SCHEMA,
            version,
            sequence,
            state,
        };
        let bytes = Bytes::from(serde_json::to_vec(&stored)?);
        self.bucket.put(Self::key::<A>(key), bytes).await?;
        Ok(())
    }

    /// The latest usable snapshot of `key`, if any.
    pub(crate) async fn latest<A: Aggregate + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(A, Tip)>, BoxError> {
        let stored = self.bucket.get(&Self::key::<A>(key)).await?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        Ok(usable::<A>(&bytes))
    }

    /// Whether an append from `before` to `after` crosses the policy's mark.
    pub(crate) fn is_due(&self, before: u64, after: u64) -> bool {
        match self.policy {
            SnapshotPolicy::Manual => false,
            SnapshotPolicy::EveryEvents(0) => false,
            SnapshotPolicy::EveryEvents(n) => before / n != after / n,
        }
    }
}

/// The snapshot in `bytes`, if it is of the current schema and reads.
fn usable<A: Aggregate + DeserializeOwned>(bytes: &[u8]) -> Option<(A, Tip)> {
    let schema = serde_json::from_slice::<Schema>(bytes).ok()?.schema;
    if schema != A::SNAPSHOT_SCHEMA {
        tracing::debug!(
            schema,
            current = A::SNAPSHOT_SCHEMA,
            "snapshot of another schema ignored"
        );
        return None;
    }
    match serde_json::from_slice::<Stored<A>>(bytes) {
        Ok(stored) => Some((
            stored.state,
            Tip {
                version: stored.version,
                sequence: stored.sequence,
            },
        )),
        Err(err) => {
            tracing::warn!(error = %err, "snapshot does not deserialize; replaying instead");
            None
        }
    }
}
