//! Envelope encryption of event data (feature `encryption`).
//!
//! Each event gets a fresh random data key; its `data` is encrypted with it
//! (XChaCha20-Poly1305) and the data key travels wrapped by a
//! key-encryption key from a [`KeyProvider`] (by default a local
//! [`Keyring`]). The CloudEvents attributes stay readable for routing; the
//! associated data binds the ciphertext and the wrapped key to the event's
//! `id`, `type`, `source` and `subject`, so neither can be moved to another
//! event. The extensions an encrypted event carries:
//!
//! | extension | value |
//! | --- | --- |
//! | `encalg` | `xchacha20poly1305` |
//! | `enckeyid` | id of the key-encryption key |
//! | `encdek` | the wrapped data key, base64 |
//! | `encscope` | `aggregate` when the data key is the aggregate's (then no `encdek`) |
//! | `enccontenttype` | the data's own `datacontenttype` (the event's is `application/octet-stream`) |
//!
//! A publisher encrypts with [`Publisher::with_encryption`](crate::publish::Publisher::with_encryption);
//! a consumer decrypts before its handler stack with
//! [`ConsumerBuilder::decrypt_with`](crate::consume::ConsumerBuilder::decrypt_with),
//! and dead-letters an event it cannot decrypt with
//! [`DeadLetterReason::Undecryptable`](crate::consume::DeadLetterReason::Undecryptable).
//! Keys, data keys and plaintext never appear in `Debug`, errors or logs.
//! With a [claim check](crate::claim_check) the data is encrypted first and
//! the ciphertext stored in the bucket.
//!
//! # Rotation
//!
//! New events use the newest key of the [`KeyProvider`]; older events stay
//! readable while their key is held. A stream is immutable, so what can be
//! moved to the newest key depends on where the wrapped data key lives:
//!
//! - **Per-aggregate data keys** ([`AggregateKeys`]) live in a KV bucket,
//!   outside the stream: [`Encryption::rewrap_aggregate_keys`] rewraps them
//!   in place, and the old key can be removed at once. Stored events and
//!   their dead letters do not change.
//! - **A data key per event** travels inside the stored message, which
//!   cannot be edited. Either keep the old key until those events leave the
//!   stream (its `max_age`), or copy the stream:
//!   [`Encryption::republish_rewrapped`] re-publishes every event, with the
//!   same id, the same ciphertext and its data key rewrapped
//!   ([`Encryption::rewrap`]), to the subjects of a new stream (two streams
//!   cannot capture the same subjects: publish under another environment
//!   or domain); consumers then move to it and the old stream is deleted.
//!
//! Neither re-encrypts data: the data key stays, only the key wrapping it
//! changes, so a leaked data key stays leaked (for that, shred and
//! re-publish the plaintext).

mod aggregate;
mod cipher;
mod error;
mod keyring;
mod rotation;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use aggregate::AggregateKeys;
pub use error::{EncryptionError, EncryptionErrorKind};
pub use keyring::{KeyProvider, Keyring, WrappedKey};
pub use rotation::RewrapReport;

use crate::envelope::{Envelope, ExtensionName};

/// Extension naming the algorithm.
pub const ALGORITHM: &str = "encalg";
/// Extension naming the key-encryption key.
pub const KEY_ID: &str = "enckeyid";
/// Extension carrying the wrapped data key.
pub const WRAPPED_KEY: &str = "encdek";
/// Extension saying the data key is the aggregate's (value `aggregate`),
/// found by the event's `partitionkey` in [`AggregateKeys`].
pub const KEY_SCOPE: &str = "encscope";
/// Extension keeping the plaintext's content type.
pub const CONTENT_TYPE: &str = "enccontenttype";

/// The `encscope` of an aggregate's data key.
const AGGREGATE_SCOPE: &str = "aggregate";

/// The content type of encrypted data.
const SEALED_CONTENT_TYPE: &str = "application/octet-stream";

/// Encrypts and decrypts event data with keys from a [`KeyProvider`].
/// Cheap to clone.
///
/// ```
/// use jetevents::encryption::{Encryption, Keyring};
/// use jetevents::Envelope;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), jetevents::encryption::EncryptionError> {
/// let keys = Keyring::new().with_key("k1", [7; 32]);
/// let encryption = Encryption::new(keys);
/// let mut envelope = Envelope::new("/billing", "billing.card.added.v1");
/// envelope.data = Some(br#"{"pan":"4111"}"#.to_vec().into());
/// encryption.seal(&mut envelope)?;
/// assert!(!envelope.data.as_deref().unwrap_or_default().windows(4).any(|w| w == b"4111"));
/// encryption.open(&mut envelope).await?;
/// assert_eq!(envelope.data.as_deref(), Some(&br#"{"pan":"4111"}"#[..]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Encryption {
    keys: Arc<dyn KeyProvider>,
    /// `None`: every type.
    event_types: Option<Arc<BTreeSet<String>>>,
    /// Per-aggregate data keys, for events with a partition key.
    aggregates: Option<AggregateKeys>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encryption")
            .field("event_types", &self.event_types)
            .field("aggregates", &self.aggregates)
            .finish_non_exhaustive()
    }
}

impl Encryption {
    /// Encryption of every event's data with keys from `keys`.
    pub fn new(keys: impl KeyProvider) -> Self {
        Self {
            keys: Arc::new(keys),
            event_types: None,
            aggregates: None,
        }
    }

    /// Encrypts events that have a partition key with their aggregate's
    /// data key from `aggregates` (created on first use), so
    /// [`AggregateKeys::shred`] makes them all unreadable. Events without a
    /// partition key still get a data key each.
    pub fn per_aggregate(mut self, aggregates: AggregateKeys) -> Self {
        self.aggregates = Some(aggregates);
        self
    }

    /// Loads (or creates) the aggregate data key that [`seal`](Self::seal)
    /// needs for an event of `event_type` with `partition_key`; nothing to
    /// do without [`per_aggregate`](Self::per_aggregate). The publisher
    /// calls it before preparing an event.
    pub async fn load(
        &self,
        event_type: &str,
        partition_key: Option<&str>,
    ) -> Result<(), EncryptionError> {
        if let (Some(aggregates), Some(partition_key), true) =
            (&self.aggregates, partition_key, self.applies_to(event_type))
        {
            aggregates
                .load_for_publishing(self.keys.as_ref(), partition_key)
                .await?;
        }
        Ok(())
    }

    /// Encrypts only events of these types (a publisher sends others in
    /// plaintext). Decryption is unaffected: it reads what it is given.
    pub fn only_types<T: Into<String>>(mut self, event_types: impl IntoIterator<Item = T>) -> Self {
        self.event_types = Some(Arc::new(event_types.into_iter().map(Into::into).collect()));
        self
    }

    /// Whether events of `event_type` are encrypted.
    pub fn applies_to(&self, event_type: &str) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|types| types.contains(event_type))
    }

    /// Whether `envelope`'s data is encrypted.
    pub fn is_sealed(envelope: &Envelope) -> bool {
        envelope.extensions.contains_key(ALGORITHM)
    }

    /// Encrypts `envelope`'s data in place and sets the extensions. An
    /// envelope without data, or already encrypted (a redrive), is left as it is.
    pub fn seal(&self, envelope: &mut Envelope) -> Result<(), EncryptionError> {
        if Self::is_sealed(envelope) {
            return Ok(());
        }
        let Some(data) = &envelope.data else {
            return Ok(());
        };
        let aad = associated_data(envelope);
        let aggregate = match (&self.aggregates, envelope.partition_key()) {
            (Some(aggregates), Some(partition_key)) => Some(
                aggregates
                    .cached(partition_key)
                    .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::NotLoaded))?,
            ),
            _ => None,
        };
        let (sealed, wrapped) = match &aggregate {
            Some(data_key) => (cipher::seal(data_key, data, &aad)?, None),
            None => {
                let data_key = cipher::random_key()?;
                let wrapped = self.keys.wrap(&data_key, &aad)?;
                (cipher::seal(&data_key, data, &aad)?, Some(wrapped))
            }
        };
        envelope.data = Some(Bytes::from(sealed));
        envelope
            .extensions
            .set(ExtensionName::from_static(ALGORITHM), cipher::ALGORITHM);
        match wrapped {
            Some(wrapped) => set_wrapped_key(envelope, wrapped)?,
            None => {
                envelope
                    .extensions
                    .set(ExtensionName::from_static(KEY_SCOPE), AGGREGATE_SCOPE);
            }
        }
        if let Some(content_type) = envelope
            .data_content_type
            .replace(SEALED_CONTENT_TYPE.to_owned())
        {
            envelope
                .extensions
                .set(ExtensionName::from_static(CONTENT_TYPE), content_type);
        }
        Ok(())
    }

    /// Decrypts `envelope`'s data in place and removes the extensions. An
    /// envelope that is not encrypted is left as it is. An aggregate's data
    /// key is read from [`AggregateKeys`] each time, so a shredded one fails
    /// at once with [`EncryptionErrorKind::Shredded`].
    pub async fn open(&self, envelope: &mut Envelope) -> Result<(), EncryptionError> {
        let Some(algorithm) = extension(envelope, ALGORITHM)? else {
            return Ok(());
        };
        if algorithm != cipher::ALGORITHM {
            return Err(EncryptionError::new(
                EncryptionErrorKind::UnsupportedAlgorithm(algorithm.to_owned()),
            ));
        }
        let aad = associated_data(envelope);
        let data_key = match extension(envelope, KEY_SCOPE)? {
            Some(AGGREGATE_SCOPE) => self.aggregate_key(envelope).await?,
            Some(_) => {
                return Err(EncryptionError::new(EncryptionErrorKind::Malformed(
                    KEY_SCOPE,
                )))
            }
            None => self.unwrap_event_key(envelope, &aad)?,
        };
        let sealed = envelope
            .data
            .as_deref()
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Malformed("no data")))?;
        let plaintext = cipher::open(&data_key, sealed, &aad)?;
        envelope.data = Some(Bytes::copy_from_slice(&plaintext));
        envelope.data_content_type = extension(envelope, CONTENT_TYPE)?.map(str::to_owned);
        for name in [ALGORITHM, KEY_ID, WRAPPED_KEY, KEY_SCOPE, CONTENT_TYPE] {
            envelope.extensions.remove(name);
        }
        Ok(())
    }

    /// The event's own data key, unwrapped.
    fn unwrap_event_key(
        &self,
        envelope: &Envelope,
        aad: &[u8],
    ) -> Result<cipher::SecretKey, EncryptionError> {
        let key_id = extension(envelope, KEY_ID)?
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Malformed(KEY_ID)))?;
        let wrapped_key = extension(envelope, WRAPPED_KEY)?
            .and_then(crate::codec::base64::decode)
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Malformed(WRAPPED_KEY)))?;
        let wrapped = WrappedKey {
            key_id: key_id.to_owned(),
            bytes: wrapped_key,
        };
        self.keys.unwrap(&wrapped, aad)
    }

    /// The data key of the event's aggregate, as stored now.
    async fn aggregate_key(
        &self,
        envelope: &Envelope,
    ) -> Result<cipher::SecretKey, EncryptionError> {
        let partition_key = envelope
            .partition_key()
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Malformed("partitionkey")))?;
        let aggregates = self
            .aggregates
            .as_ref()
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::NotLoaded))?;
        aggregates
            .load_for_opening(self.keys.as_ref(), partition_key)
            .await
    }
}

/// Sets the extensions of an event's own wrapped data key.
fn set_wrapped_key(envelope: &mut Envelope, wrapped: WrappedKey) -> Result<(), EncryptionError> {
    let mut encoded_key = Vec::new();
    crate::codec::base64::encode_into(&wrapped.bytes, &mut encoded_key);
    let encoded_key = String::from_utf8(encoded_key)
        .map_err(|_| EncryptionError::new(EncryptionErrorKind::Malformed("base64")))?;
    let extensions = &mut envelope.extensions;
    extensions.set(ExtensionName::from_static(KEY_ID), wrapped.key_id);
    extensions.set(ExtensionName::from_static(WRAPPED_KEY), encoded_key);
    Ok(())
}

/// A string extension; binary mode decodes every extension as a string.
fn extension<'a>(
    envelope: &'a Envelope,
    name: &'static str,
) -> Result<Option<&'a str>, EncryptionError> {
    match envelope.extensions.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .map(Some)
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::Malformed(name))),
    }
}

/// The attributes the ciphertext is bound to, each length-prefixed so no
/// two different attribute sets give the same bytes.
fn associated_data(envelope: &Envelope) -> Vec<u8> {
    let subject = envelope.subject.as_deref();
    let fields = [
        Some(envelope.id.as_str()),
        Some(envelope.event_type.as_str()),
        Some(envelope.source.as_str()),
        subject,
    ];
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"jetevents-encryption-v1");
    for field in fields {
        match field {
            None => aad.push(0),
            Some(value) => {
                aad.push(1);
                aad.extend_from_slice(&(value.len() as u64).to_be_bytes());
                aad.extend_from_slice(value.as_bytes());
            }
        }
    }
    aad
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sealed(encryption: &Encryption) -> Envelope {
        let mut envelope = Envelope::new("/billing", "billing.card.added.v1");
        envelope.subject = Some("customer-1".to_owned());
        envelope.data_content_type = Some("application/json".to_owned());
        envelope.data = Some(Bytes::from_static(br#"{"pan":"4111"}"#));
        encryption.seal(&mut envelope).unwrap();
        envelope
    }

    fn kind(result: Result<(), EncryptionError>) -> EncryptionErrorKind {
        result.unwrap_err().into_kind()
    }

    #[tokio::test]
    async fn opening_restores_data_and_content_type_and_drops_the_extensions() {
        let encryption = Encryption::new(Keyring::new().with_key("k1", [1; 32]));
        let mut envelope = sealed(&encryption);
        encryption.open(&mut envelope).await.unwrap();
        assert_eq!(envelope.data.as_deref(), Some(&br#"{"pan":"4111"}"#[..]));
        assert_eq!(
            envelope.data_content_type.as_deref(),
            Some("application/json")
        );
        assert!(envelope.extensions.is_empty());
    }

    #[tokio::test]
    async fn ciphertext_moved_to_another_event_does_not_open() {
        let encryption = Encryption::new(Keyring::new().with_key("k1", [1; 32]));
        for change in [
            |e: &mut Envelope| e.id = "another".to_owned(),
            |e: &mut Envelope| e.event_type = "billing.card.removed.v1".to_owned(),
            |e: &mut Envelope| e.source = "/other".to_owned(),
            |e: &mut Envelope| e.subject = None,
        ] {
            let mut envelope = sealed(&encryption);
            change(&mut envelope);
            assert_eq!(
                kind(encryption.open(&mut envelope).await),
                EncryptionErrorKind::Tampered
            );
        }
    }

    #[tokio::test]
    async fn a_removed_key_is_unknown_and_an_old_one_still_opens() {
        let old = Keyring::new().with_key("k1", [1; 32]);
        let rotated = old.clone().with_key("k2", [2; 32]);
        let from_old = sealed(&Encryption::new(old));
        let from_rotated = sealed(&Encryption::new(rotated.clone()));
        assert_eq!(from_rotated.extension(KEY_ID).unwrap().to_string(), "k2");
        assert!(Encryption::new(rotated.clone())
            .open(&mut from_old.clone())
            .await
            .is_ok());
        let retired = Encryption::new(rotated.without_key("k1"));
        assert_eq!(
            kind(retired.open(&mut from_old.clone()).await),
            EncryptionErrorKind::UnknownKey {
                key_id: "k1".to_owned()
            }
        );
    }

    #[test]
    fn keyring_entries_are_checked_without_echoing_them() {
        for (text, entry) in [
            ("", 0),
            ("k1", 1),
            ("# comment\nk1=c2hvcnQ=", 2),
            ("k1=not base64!", 1),
        ] {
            let err = Keyring::parse(text).unwrap_err();
            assert!(
                matches!(err.kind(), EncryptionErrorKind::InvalidKeyring { entry: e, .. } if *e == entry),
                "{text}: {err}"
            );
            assert!(!err.to_string().contains("c2hvcnQ"));
        }
    }
}
