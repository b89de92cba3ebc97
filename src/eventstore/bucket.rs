//! A KV bucket on either backend: the event store's seam to JetStream's KV
//! (snapshots, projection checkpoints, leases) and to the in-memory
//! JetStream's buckets.

use std::fmt;

use bytes::Bytes;

use super::{ProvisionError, ProvisionErrorKind};
use crate::client::Client;
use crate::error::BoxError;
use async_nats::jetstream::kv;

/// One KV bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) enum Bucket {
    /// Boxed: a KV handle is large next to the in-memory bucket's `Arc`.
    Nats(Box<kv::Store>),
    #[cfg(feature = "testing")]
    Memory(crate::testing::MemoryKeyValue),
}

/// A key's latest entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// `None` for a delete or purge marker.
    pub(crate) value: Option<Bytes>,
    pub(crate) revision: u64,
}

/// A conditional write that did not happen.
#[derive(Debug)]
pub(crate) struct WriteFailure {
    /// The condition did not hold (the key exists, or its revision is
    /// another), rather than the bucket failing.
    pub(crate) refused: bool,
    pub(crate) source: BoxError,
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for WriteFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

fn failure(refused: bool, source: impl Into<BoxError>) -> WriteFailure {
    WriteFailure {
        refused,
        source: source.into(),
    }
}

#[cfg(feature = "testing")]
fn refused(refusal: crate::testing::KvRefusal) -> WriteFailure {
    failure(true, refusal)
}

impl Bucket {
    /// The bucket `config.bucket` of `client`'s JetStream, created (or
    /// updated, when `update`) with `config`; on the in-memory JetStream
    /// one in memory with the same max age.
    pub(crate) async fn provision(
        client: &Client,
        config: kv::Config,
        update: bool,
    ) -> Result<Bucket, ProvisionError> {
        #[cfg(feature = "testing")]
        if let Some(memory) = client.memory() {
            let max_age = Some(config.max_age).filter(|age| !age.is_zero());
            return Ok(Bucket::Memory(memory.key_value(&config.bucket, max_age)));
        }
        let jetstream = &client
            .nats_transport("KV buckets")
            .map_err(|err| crate::Error::with_source(ProvisionErrorKind::NeedsNats, err))?
            .jetstream;
        let store = if update {
            jetstream.create_or_update_key_value(config).await
        } else {
            jetstream.create_key_value(config).await
        };
        let store =
            store.map_err(|err| crate::Error::with_source(ProvisionErrorKind::Server, err))?;
        Ok(Bucket::Nats(Box::new(store)))
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, BoxError> {
        match self {
            Bucket::Nats(bucket) => Ok(bucket.get(key).await?),
            #[cfg(feature = "testing")]
            Bucket::Memory(bucket) => Ok(bucket.get(key)),
        }
    }

    /// The key's latest entry, delete markers included.
    pub(crate) async fn entry(&self, key: &str) -> Result<Option<Entry>, BoxError> {
        match self {
            Bucket::Nats(bucket) => Ok(bucket.entry(key).await?.map(|entry| Entry {
                value: matches!(entry.operation, kv::Operation::Put).then_some(entry.value),
                revision: entry.revision,
            })),
            #[cfg(feature = "testing")]
            Bucket::Memory(bucket) => Ok(bucket.entry(key).map(|entry| Entry {
                value: entry.value,
                revision: entry.revision,
            })),
        }
    }

    /// Writes `key` if it has no value; its revision.
    pub(crate) async fn create(&self, key: &str, value: Bytes) -> Result<u64, WriteFailure> {
        match self {
            Bucket::Nats(bucket) => bucket.create(key, value).await.map_err(|err| {
                let exists = matches!(err.kind(), kv::CreateErrorKind::AlreadyExists);
                failure(exists, err)
            }),
            #[cfg(feature = "testing")]
            Bucket::Memory(bucket) => bucket.create(key.to_owned(), value).map_err(refused),
        }
    }

    /// Writes `key` if its latest revision is `revision`; the new one.
    pub(crate) async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, WriteFailure> {
        match self {
            Bucket::Nats(bucket) => bucket.update(key, value, revision).await.map_err(|err| {
                let moved = matches!(err.kind(), kv::UpdateErrorKind::WrongLastRevision);
                failure(moved, err)
            }),
            #[cfg(feature = "testing")]
            Bucket::Memory(bucket) => bucket
                .update(key.to_owned(), value, revision)
                .map_err(refused),
        }
    }

    /// Deletes `key` if its latest revision is `revision`.
    pub(crate) async fn delete_expect_revision(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<(), BoxError> {
        match self {
            Bucket::Nats(bucket) => Ok(bucket.delete_expect_revision(key, Some(revision)).await?),
            #[cfg(feature = "testing")]
            Bucket::Memory(bucket) => Ok(bucket.delete_expect_revision(key, revision)?),
        }
    }
}
