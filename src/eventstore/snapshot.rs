//! Snapshots: an aggregate's state at a version, kept in a KV bucket so a
//! load replays only the events after it.
//!
//! A snapshot records the state, its version, the stream sequence and the
//! id of the event it ends on, and [`Aggregate::SNAPSHOT_SCHEMA`]. A
//! snapshot of another schema, or one that does not deserialize, is
//! ignored (the state is replayed from the events), never misread. A load
//! uses a snapshot only while the aggregate's event at its sequence is still
//! that event (see [`EventStore::load`](super::EventStore::load)); snapshots
//! saved before the id was recorded have none, and are checked by version
//! and sequence alone.
//!
//! A save never replaces a newer snapshot: concurrent writers each save the
//! snapshot their own append made due, and those saves reach the bucket in
//! any order. Each save reads the key's entry and writes only over the
//! revision it read (creating the key when it has none), so an older
//! snapshot landing last cannot overwrite a newer one and make every later
//! load replay more. A stored snapshot of another schema, or one that does
//! not read, is replaced whatever its version: no load can use it.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::bucket::{Bucket, Entry};
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
///
/// Give each event store (each stream, each environment) its own bucket:
/// a snapshot's key is the aggregate's kind and key only, so two stores
/// sharing a bucket would replace each other's snapshots of the same
/// aggregate, and a load could start from the other store's state.
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
    /// The CloudEvents id of the event at `sequence`. Absent from snapshots
    /// saved before it was recorded: they still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    state: S,
}

/// A stored snapshot a load may start from.
#[derive(Debug)]
pub(crate) struct Snapshot<A> {
    pub(crate) state: A,
    /// Where the aggregate stood: the version and sequence of the event the
    /// snapshot ends on.
    pub(crate) at: Tip,
    /// That event's id (`None` in snapshots saved before it was recorded).
    pub(crate) event_id: Option<String>,
}

/// Only the schema, read first so a snapshot of another shape is never
/// deserialized as this one.
#[derive(serde::Deserialize)]
struct Schema {
    schema: u32,
}

/// The schema and version of a stored snapshot, without its state: what a
/// save compares against.
#[derive(serde::Deserialize)]
struct Versioned {
    schema: u32,
    version: u64,
}

/// Writes of one save that found the key changed since it read it. Each
/// such refusal means another save landed in between; past this many the
/// save gives up with the refusal as its error.
const SAVE_ATTEMPTS: u32 = 16;

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
    /// sequence `sequence` with the id `event_id`, unless a snapshot of `key`
    /// at `version` or later (of the current schema) is stored: then it
    /// keeps that one and returns `Ok` (an older state saved late, by this
    /// caller or a concurrent writer, never replaces a newer one).
    ///
    /// The three come from a [`Loaded`](super::Loaded): its `version`,
    /// `sequence` and `last_event_id`. A load uses the snapshot only while
    /// the aggregate's event at `sequence` has this version and id, so a
    /// snapshot saved with a wrong one is never used, not misread.
    ///
    /// ```no_run
    /// # use jetevents::eventstore::*;
    /// # async fn run<A: Aggregate + serde::Serialize + serde::de::DeserializeOwned>(
    /// #     store: EventStore, snapshots: Snapshots,
    /// # ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let loaded = store.load::<A>("acc-1").await?;
    /// if let Some(event_id) = &loaded.last_event_id {
    ///     snapshots
    ///         .save("acc-1", &loaded.state, loaded.version, loaded.sequence, event_id)
    ///         .await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn save<A: Aggregate + Serialize>(
        &self,
        key: &str,
        state: &A,
        version: u64,
        sequence: u64,
        event_id: &str,
    ) -> Result<(), BoxError> {
        let stored = Stored {
            schema: A::SNAPSHOT_SCHEMA,
            version,
            sequence,
            event_id: Some(event_id.to_owned()),
            state,
        };
        let bytes = Bytes::from(serde_json::to_vec(&stored)?);
        let key = Self::key::<A>(key);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let entry = self.bucket.entry(&key).await?;
            if let Some(newer) = entry
                .as_ref()
                .and_then(|entry| stored_version::<A>(entry).filter(|&stored| stored >= version))
            {
                tracing::debug!(
                    version,
                    stored = newer,
                    "snapshot not saved: a newer one is stored"
                );
                return Ok(());
            }
            let written = match entry {
                None => self.bucket.create(&key, bytes.clone()).await,
                Some(entry) => {
                    self.bucket
                        .update(&key, bytes.clone(), entry.revision)
                        .await
                }
            };
            match written {
                Ok(_) => return Ok(()),
                // Another save landed since the read: compare with it.
                Err(failure) if failure.refused && attempts < SAVE_ATTEMPTS => continue,
                Err(failure) => return Err(failure.into()),
            }
        }
    }

    /// The latest usable snapshot of `key`, if any.
    pub(crate) async fn latest<A: Aggregate + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Snapshot<A>>, BoxError> {
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

/// The version of the snapshot in `entry`, if it is of the current schema
/// and reads (a delete marker, another schema or unreadable bytes: `None`,
/// replaceable).
fn stored_version<A: Aggregate>(entry: &Entry) -> Option<u64> {
    let versioned = serde_json::from_slice::<Versioned>(entry.value.as_deref()?).ok()?;
    (versioned.schema == A::SNAPSHOT_SCHEMA).then_some(versioned.version)
}

/// The snapshot in `bytes`, if it is of the current schema and reads.
fn usable<A: Aggregate + DeserializeOwned>(bytes: &[u8]) -> Option<Snapshot<A>> {
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
        Ok(stored) => Some(Snapshot {
            state: stored.state,
            at: Tip {
                version: stored.version,
                sequence: stored.sequence,
            },
            event_id: stored.event_id,
        }),
        Err(err) => {
            tracing::warn!(error = %err, "snapshot does not deserialize; replaying instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Default, PartialEq, Serialize, serde::Deserialize)]
    struct Counter(u64);

    #[derive(Serialize, serde::Deserialize)]
    enum Counted {
        #[serde(rename = "counted.v1")]
        Counted,
    }

    impl Aggregate for Counter {
        const KIND: &'static str = "test.counter";
        type Event = Counted;
        type Command = ();
        type Error = std::convert::Infallible;
        fn apply(&mut self, _: &Counted) {
            self.0 += 1;
        }
        fn handle(&self, _: &()) -> Result<Vec<Counted>, Self::Error> {
            Ok(vec![])
        }
    }

    #[test]
    fn a_snapshot_saved_before_ids_were_recorded_reads_without_one() {
        let old = br#"{"schema":1,"version":7,"sequence":42,"state":7}"#;
        let snapshot = usable::<Counter>(old).unwrap();
        assert_eq!(snapshot.state, Counter(7));
        assert_eq!(
            snapshot.at,
            Tip {
                version: 7,
                sequence: 42
            }
        );
        assert_eq!(snapshot.event_id, None);
    }

    #[test]
    fn a_snapshot_keeps_the_id_of_the_event_it_ends_on() {
        let stored = Stored {
            schema: Counter::SNAPSHOT_SCHEMA,
            version: 7,
            sequence: 42,
            event_id: Some("0193-e7".to_owned()),
            state: &Counter(7),
        };
        let bytes = serde_json::to_vec(&stored).unwrap();
        let snapshot = usable::<Counter>(&bytes).unwrap();
        assert_eq!(snapshot.event_id.as_deref(), Some("0193-e7"));
        assert_eq!(snapshot.at.sequence, 42);
    }
}
