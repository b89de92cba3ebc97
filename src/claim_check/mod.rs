//! Claim check: data too large for a message goes to a JetStream Object
//! Store bucket, and the event carries a reference to it and its SHA-256
//! digest as CloudEvents extensions.
//!
//! A publisher made with
//! [`Publisher::with_claim_check`](crate::publish::Publisher::with_claim_check)
//! stores the data of an event whose encoded message would not fit the
//! server's `max_payload` (or whose data exceeds a set
//! [`threshold`](ClaimCheck::threshold)) as the object named by the event's
//! id, sends the event without data and with [`BUCKET`], [`OBJECT`] and
//! [`DIGEST`], and keeps every other attribute readable for routing. With
//! encryption the data is encrypted first and the ciphertext stored, so the
//! bucket holds no plaintext.
//!
//! Every consumer fetches the data back before the handler runs (and before
//! decrypting), from the bucket the event names, and checks the digest. A
//! missing object is dead-lettered with
//! [`DeadLetterReason::ClaimMissing`](crate::consume::DeadLetterReason::ClaimMissing),
//! one whose bytes do not match with
//! [`DeadLetterReason::ClaimCorrupt`](crate::consume::DeadLetterReason::ClaimCorrupt);
//! a bucket that cannot be read is retried (Nak with the retry delay).
//!
//! # Retention
//!
//! An object must outlive its event *and* the event's dead-letter copy
//! (the copy keeps the reference, so a redrive fetches the same object).
//! The bucket has no age limit of its own: objects are removed by
//! [`ClaimCheck::remove_orphans`], run periodically with every stream that
//! may hold a reference (the event stream and its dead-letter stream); it
//! deletes only objects no message in those streams refers to and older
//! than a grace period that covers publishing (an object is stored before
//! its event). Give the bucket at least the replicas of the event stream.

mod cleanup;
mod error;

use std::collections::HashMap;
use std::fmt;

use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectMetadata, ObjectStore};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use cleanup::CleanupReport;
pub use error::{ClaimCheckError, ClaimCheckErrorKind};

use crate::client::Client;
use crate::envelope::{Envelope, ExtensionName};

/// Extension naming the Object Store bucket that holds the data.
pub const BUCKET: &str = "claimbucket";
/// Extension naming the object (the event's id when published).
pub const OBJECT: &str = "claimobject";
/// Extension carrying the SHA-256 of the stored bytes, lowercase hex.
pub const DIGEST: &str = "claimdigest";

/// Object metadata: when the object was stored (Unix milliseconds), for the
/// cleanup's grace period.
const STORED_AT: &str = "jetevents-stored-at";

/// Stores large event data in an Object Store bucket. Cheap to clone.
///
/// ```no_run
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use jetevents::claim_check::ClaimCheck;
///
/// let claim_check = ClaimCheck::open(&client, "documents").await?;
/// let publisher = client.publisher().with_claim_check(claim_check);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClaimCheck {
    store: ObjectStore,
    bucket: String,
    /// `None`: when the message would exceed the server's `max_payload`.
    threshold: Option<usize>,
}

impl fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("bucket", &self.bucket)
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl ClaimCheck {
    /// Opens the Object Store bucket `bucket`, creating it (file storage,
    /// no age limit: see [Retention](crate::claim_check#retention)) if missing.
    pub async fn open(client: &Client, bucket: &str) -> Result<Self, ClaimCheckError> {
        let jetstream = client
            .jetstream()
            .ok_or_else(|| ClaimCheckError::new(ClaimCheckErrorKind::NeedsNats))?;
        let store = match jetstream.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("jetevents: claim-checked event data".to_owned()),
                    ..Default::default()
                })
                .await
                .map_err(|err| store_error(bucket, err))?,
        };
        Ok(Self {
            store,
            bucket: bucket.to_owned(),
            threshold: None,
        })
    }

    /// Stores the data of events whose data exceeds `bytes` (encrypted
    /// size when encrypted), instead of only what would not fit a message.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = Some(bytes);
        self
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether data of `data_len` bytes, in a message of `wire_size` bytes,
    /// goes to the bucket.
    pub(crate) fn applies(&self, data_len: usize, wire_size: usize, max_payload: usize) -> bool {
        match self.threshold {
            Some(threshold) => data_len > threshold,
            None => wire_size > max_payload,
        }
    }

    /// Whether `envelope`'s data is in a bucket.
    pub fn is_claimed(envelope: &Envelope) -> bool {
        envelope.extensions.contains_key(OBJECT)
    }

    /// Moves `envelope`'s data into the bucket, as the object named by its
    /// id, and sets the extensions. An envelope without data, or already
    /// claimed (a redrive), is left as it is.
    pub async fn store(&self, envelope: &mut Envelope) -> Result<(), ClaimCheckError> {
        if Self::is_claimed(envelope) {
            return Ok(());
        }
        let Some(data) = envelope.data.take() else {
            return Ok(());
        };
        let metadata = ObjectMetadata {
            name: envelope.id.clone(),
            metadata: HashMap::from([(STORED_AT.to_owned(), now_millis().to_string())]),
            ..Default::default()
        };
        if let Err(err) = self.store.put(metadata, &mut &data[..]).await {
            envelope.data = Some(data);
            return Err(store_error(&self.bucket, err));
        }
        let extensions = &mut envelope.extensions;
        extensions.set(ExtensionName::from_static(BUCKET), self.bucket.clone());
        extensions.set(ExtensionName::from_static(OBJECT), envelope.id.clone());
        extensions.set(ExtensionName::from_static(DIGEST), digest(&data));
        Ok(())
    }

    /// Fetches the data of a claimed `envelope` from the bucket it names,
    /// checks its digest, puts it back as the data and removes the
    /// extensions. An envelope that is not claimed is left as it is.
    pub async fn fetch(client: &Client, envelope: &mut Envelope) -> Result<(), ClaimCheckError> {
        let Some(object) = extension(envelope, OBJECT)? else {
            return Ok(());
        };
        let bucket = extension(envelope, BUCKET)?
            .ok_or_else(|| ClaimCheckError::new(ClaimCheckErrorKind::Malformed(BUCKET)))?;
        let expected = extension(envelope, DIGEST)?
            .ok_or_else(|| ClaimCheckError::new(ClaimCheckErrorKind::Malformed(DIGEST)))?;
        let jetstream = client
            .jetstream()
            .ok_or_else(|| ClaimCheckError::new(ClaimCheckErrorKind::NeedsNats))?;
        let store = jetstream
            .get_object_store(bucket)
            .await
            .map_err(|err| store_error(bucket, err))?;
        let data = read_object(&store, bucket, object).await?;
        if digest(&data) != expected {
            return Err(ClaimCheckError::new(ClaimCheckErrorKind::DigestMismatch {
                object: object.to_owned(),
            }));
        }
        envelope.data = Some(Bytes::from(data));
        for name in [BUCKET, OBJECT, DIGEST] {
            envelope.extensions.remove(name);
        }
        Ok(())
    }
}

/// The bytes of `object`, checked against the bucket's own digest too.
async fn read_object(
    store: &ObjectStore,
    bucket: &str,
    object: &str,
) -> Result<Vec<u8>, ClaimCheckError> {
    let mut reader = store.get(object).await.map_err(|err| match err.kind() {
        GetErrorKind::NotFound => ClaimCheckError::new(ClaimCheckErrorKind::ObjectMissing {
            object: object.to_owned(),
        }),
        _ => store_error(bucket, err),
    })?;
    let mut data = Vec::with_capacity(reader.info().size);
    reader
        .read_to_end(&mut data)
        .await
        .map_err(|err| match err.kind() {
            // async-nats's own digest check of the chunks.
            std::io::ErrorKind::InvalidData => ClaimCheckError::with_source(
                ClaimCheckErrorKind::DigestMismatch {
                    object: object.to_owned(),
                },
                err,
            ),
            _ => store_error(bucket, err),
        })?;
    Ok(data)
}

/// SHA-256 of `bytes` in lowercase hex.
fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn store_error(
    bucket: &str,
    err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ClaimCheckError {
    ClaimCheckError::with_source(ClaimCheckErrorKind::Store(format!("bucket {bucket}")), err)
}

/// A string extension (binary mode decodes every extension as a string).
fn extension<'a>(
    envelope: &'a Envelope,
    name: &'static str,
) -> Result<Option<&'a str>, ClaimCheckError> {
    let malformed = || ClaimCheckError::new(ClaimCheckErrorKind::Malformed(name));
    envelope
        .extension(name)
        .map(|value| value.as_str().ok_or_else(malformed))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_sha256_in_hex() {
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
