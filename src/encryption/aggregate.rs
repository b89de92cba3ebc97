//! Per-aggregate data keys for crypto-shredding: one data key per partition
//! key, kept wrapped by the key-encryption key in a KV bucket. Deleting an
//! aggregate's key ([`AggregateKeys::shred`]) makes every event of it
//! unreadable, the right-to-be-forgotten answer for an immutable stream.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use bytes::Bytes;

use super::cipher::{self, SecretKey};
use super::error::{EncryptionError, EncryptionErrorKind};
use super::keyring::{KeyProvider, WrappedKey};
use crate::client::Client;

/// The KV bucket of aggregate keys, and the keys this process created or
/// read for publishing.
#[derive(Clone)]
pub struct AggregateKeys {
    store: kv::Store,
    bucket: String,
    /// Publishing only: a consumer reads the bucket for every event, so a
    /// shredded key stops decryption at once.
    for_publishing: Arc<Mutex<HashMap<String, Arc<SecretKey>>>>,
}

impl fmt::Debug for AggregateKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateKeys")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl AggregateKeys {
    /// Opens the KV bucket `bucket`, creating it if missing (one value per
    /// key, kept until shredded).
    pub async fn open(client: &Client, bucket: &str) -> Result<Self, EncryptionError> {
        let unavailable = |err: Box<dyn std::error::Error + Send + Sync>| {
            EncryptionError::with_source(
                EncryptionErrorKind::KeyStore(format!("bucket {bucket}")),
                err,
            )
        };
        let jetstream = client
            .jetstream()
            .ok_or_else(|| unavailable("aggregate keys need a NATS connection".into()))?;
        let store = match jetstream.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "jetevents: per-aggregate data keys, wrapped".to_owned(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|err| unavailable(err.into()))?,
        };
        Ok(Self {
            store,
            bucket: bucket.to_owned(),
            for_publishing: Arc::default(),
        })
    }

    /// Deletes the key of aggregate `partition_key`: its events, stored and
    /// dead-lettered, can no longer be decrypted.
    pub async fn shred(&self, partition_key: &str) -> Result<(), EncryptionError> {
        self.cache().remove(partition_key);
        self.store
            .purge(entry_name(partition_key))
            .await
            .map_err(|err| self.store_error(err))
    }

    /// The key of `partition_key` for publishing, created on first use.
    pub(super) async fn load_for_publishing(
        &self,
        keys: &dyn KeyProvider,
        partition_key: &str,
    ) -> Result<Arc<SecretKey>, EncryptionError> {
        if let Some(key) = self.cached(partition_key) {
            return Ok(key);
        }
        let key = match self.read(keys, partition_key).await? {
            Some(key) => key,
            None => self.create(keys, partition_key).await?,
        };
        let key = Arc::new(key);
        self.cache()
            .insert(partition_key.to_owned(), Arc::clone(&key));
        Ok(key)
    }

    /// The key [`load_for_publishing`](Self::load_for_publishing) loaded.
    pub(super) fn cached(&self, partition_key: &str) -> Option<Arc<SecretKey>> {
        self.cache().get(partition_key).cloned()
    }

    /// The key of `partition_key` as stored now; `Shredded` when deleted.
    pub(super) async fn load_for_opening(
        &self,
        keys: &dyn KeyProvider,
        partition_key: &str,
    ) -> Result<SecretKey, EncryptionError> {
        self.read(keys, partition_key)
            .await?
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Shredded))
    }

    async fn read(
        &self,
        keys: &dyn KeyProvider,
        partition_key: &str,
    ) -> Result<Option<SecretKey>, EncryptionError> {
        let Some(value) = self
            .store
            .get(entry_name(partition_key))
            .await
            .map_err(|err| self.store_error(err))?
        else {
            return Ok(None);
        };
        let wrapped = parse_entry(&value)?;
        keys.unwrap(&wrapped, &context(partition_key)).map(Some)
    }

    /// Creates the key, or reads the one another publisher created first.
    async fn create(
        &self,
        keys: &dyn KeyProvider,
        partition_key: &str,
    ) -> Result<SecretKey, EncryptionError> {
        let key = cipher::random_key()?;
        let wrapped = keys.wrap(&key, &context(partition_key))?;
        match self
            .store
            .create(entry_name(partition_key), format_entry(&wrapped))
            .await
        {
            Ok(_) => Ok(key),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => self
                .read(keys, partition_key)
                .await?
                .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Shredded)),
            Err(err) => Err(self.store_error(err)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SecretKey>>> {
        // A panic while holding the lock leaves the map whole.
        self.for_publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn store(&self) -> &kv::Store {
        &self.store
    }

    pub(super) fn store_error(
        &self,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> EncryptionError {
        EncryptionError::with_source(
            EncryptionErrorKind::KeyStore(format!("bucket {}", self.bucket)),
            err,
        )
    }
}

/// The associated data of an aggregate's wrapped key.
pub(super) fn context(partition_key: &str) -> Vec<u8> {
    let mut context = b"jetevents-aggregate-key-v1:".to_vec();
    context.extend_from_slice(partition_key.as_bytes());
    context
}

/// A KV key for any partition key: its bytes in hex (KV keys allow few
/// characters).
fn entry_name(partition_key: &str) -> String {
    partition_key
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The partition key of a KV key [`entry_name`] made.
pub(super) fn partition_key_of(entry_name: &str) -> Result<String, EncryptionError> {
    let malformed = || EncryptionError::new(EncryptionErrorKind::Malformed("aggregate key name"));
    let bytes = (0..entry_name.len())
        .step_by(2)
        .map(|at| {
            entry_name
                .get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(malformed)
        })
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| malformed())
}

/// `key id \n base64 of the wrapped key`.
pub(super) fn format_entry(wrapped: &WrappedKey) -> Bytes {
    let mut entry = wrapped.key_id.as_bytes().to_vec();
    entry.push(b'\n');
    crate::codec::base64::encode_into(&wrapped.bytes, &mut entry);
    Bytes::from(entry)
}

pub(super) fn parse_entry(entry: &[u8]) -> Result<WrappedKey, EncryptionError> {
    let malformed = || EncryptionError::new(EncryptionErrorKind::Malformed("aggregate key entry"));
    let text = std::str::from_utf8(entry).map_err(|_| malformed())?;
    let (key_id, encoded) = text.split_once('\n').ok_or_else(malformed)?;
    Ok(WrappedKey {
        key_id: key_id.to_owned(),
        bytes: crate::codec::base64::decode(encoded).ok_or_else(malformed)?,
    })
}
