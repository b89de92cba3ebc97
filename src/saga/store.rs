//! The saga buckets: running sagas by correlation id, each write a
//! compare-and-set on the key's revision, and the archive of finished ones.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::{de::DeserializeOwned, Serialize};

use super::error::{SagaError, SagaErrorKind};
use super::record::SagaRecord;

/// The buckets of one saga.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    running: kv::Store,
    archive: kv::Store,
}

/// The result of a compare-and-set.
pub(crate) enum Written {
    Stored(u64),
    /// Another writer got there first: read again.
    Conflict,
}

fn store_error(err: impl Into<crate::error::BoxError>) -> SagaError {
    SagaError::with_source(SagaErrorKind::Store, err)
}

/// `SAGA_{name}` holds the running sagas, `SAGA_{name}_DONE` the finished.
pub(crate) fn bucket_names(saga: &str) -> (String, String) {
    (format!("SAGA_{saga}"), format!("SAGA_{saga}_DONE"))
}

impl Store {
    /// Opens the buckets of `saga`, creating them when missing.
    pub async fn open(jetstream: &jetstream::Context, saga: &str) -> Result<Self, SagaError> {
        let (running, archive) = bucket_names(saga);
        Ok(Self {
            running: open_bucket(jetstream, running).await?,
            archive: open_bucket(jetstream, archive).await?,
        })
    }

    /// The running saga under `key` and its revision.
    pub async fn load<S: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(SagaRecord<S>, u64)>, SagaError> {
        let Some(entry) = self.running.entry(key).await.map_err(store_error)? else {
            return Ok(None);
        };
        if !matches!(entry.operation, kv::Operation::Put) {
            return Ok(None);
        }
        Ok(Some((decode(&entry.value)?, entry.revision)))
    }

    /// Whether the saga under `key` finished (so its start event, delivered
    /// again, does not start it again).
    pub async fn is_archived(&self, key: &str) -> Result<bool, SagaError> {
        Ok(self.archive.get(key).await.map_err(store_error)?.is_some())
    }

    /// The finished saga under `key`.
    pub async fn archived<S: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<SagaRecord<S>>, SagaError> {
        match self.archive.get(key).await.map_err(store_error)? {
            Some(value) => Ok(Some(decode(&value)?)),
            None => Ok(None),
        }
    }

    /// Writes `record` if the key is still at `revision` (0: absent).
    pub async fn write<S: Serialize>(
        &self,
        key: &str,
        record: &SagaRecord<S>,
        revision: u64,
    ) -> Result<Written, SagaError> {
        let value = encode(record)?;
        if revision == 0 {
            return match self.running.create(key, value).await {
                Ok(revision) => Ok(Written::Stored(revision)),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                    Ok(Written::Conflict)
                }
                Err(err) => Err(store_error(err)),
            };
        }
        match self.running.update(key, value, revision).await {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(Written::Conflict)
            }
            Err(err) => Err(store_error(err)),
        }
    }

    /// Moves a finished saga to the archive: copied first, so a crash in
    /// between leaves it in both (the next event finishes the move).
    pub async fn archive<S: Serialize>(
        &self,
        key: &str,
        record: &SagaRecord<S>,
        revision: u64,
    ) -> Result<(), SagaError> {
        self.archive
            .put(key, encode(record)?)
            .await
            .map_err(store_error)?;
        match self
            .running
            .delete_expect_revision(key, Some(revision))
            .await
        {
            Ok(()) => Ok(()),
            // Changed meanwhile: whoever changed it archives it.
            Err(err) if err.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(err) => Err(store_error(err)),
        }
    }

    /// The keys of the running sagas.
    pub async fn running_keys(&self) -> Result<Vec<String>, SagaError> {
        match self.running.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(store_error),
            Err(err) => Err(store_error(err)),
        }
    }
}

async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: String,
) -> Result<kv::Store, SagaError> {
    if let Ok(store) = jetstream.get_key_value(&bucket).await {
        return Ok(store);
    }
    jetstream
        .create_key_value(kv::Config {
            bucket,
            history: 1,
            ..Default::default()
        })
        .await
        .map_err(store_error)
}

fn encode<S: Serialize>(record: &SagaRecord<S>) -> Result<Bytes, SagaError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|err| SagaError::with_source(SagaErrorKind::Corrupt, err))
}

fn decode<S: DeserializeOwned>(value: &[u8]) -> Result<SagaRecord<S>, SagaError> {
    serde_json::from_slice(value).map_err(|err| SagaError::with_source(SagaErrorKind::Corrupt, err))
}

/// The bucket key of a correlation id: itself when it is a valid key of
/// letters, digits, `-`, `_` and `=`; otherwise `~` and its bytes in hex.
pub(crate) fn key_of(correlation_id: &str) -> String {
    let plain = !correlation_id.is_empty()
        && correlation_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='));
    if plain {
        return correlation_id.to_owned();
    }
    let mut key = String::with_capacity(1 + 2 * correlation_id.len());
    key.push('=');
    for byte in correlation_id.bytes() {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}
