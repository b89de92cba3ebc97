//! Key-encryption keys: the [`KeyProvider`] trait and the embedded default,
//! a local [`Keyring`].

use std::fmt;
use std::path::Path;

use super::cipher::{self, SecretKey, KEY_LEN};
use super::error::{EncryptionError, EncryptionErrorKind};

/// A data key wrapped by a key-encryption key, and that key's id.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrappedKey {
    /// Id of the key-encryption key that wrapped it.
    pub key_id: String,
    /// The wrapped key, in the provider's own format.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_id", &self.key_id)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

/// Holds key-encryption keys and wraps and unwraps 32-byte data keys with
/// them. The embedded default is [`Keyring`].
///
/// The calls are synchronous on purpose: they run for every event published
/// and every delivery (an event's own data key is unwrapped each time), so
/// a network round trip per call is not affordable. A Vault Transit or
/// cloud KMS provider therefore caches key-encryption keys, not data keys:
/// it fetches its keys from the KMS encrypted, decrypts them there once (at
/// start, and again on a schedule to pick up rotations, on its own task),
/// holds them in memory, and wraps and unwraps locally, as [`Keyring`] does
/// (a provider can build a `Keyring` and delegate to it). The KMS then sees
/// one call per refresh, and a KMS outage stops nothing until a new key is
/// needed.
///
/// `context` is bound to the wrapped key (associated data): unwrapping
/// with another context fails.
pub trait KeyProvider: Send + Sync + 'static {
    /// Wraps `data_key` with the newest key-encryption key.
    fn wrap(&self, data_key: &[u8; KEY_LEN], context: &[u8])
        -> Result<WrappedKey, EncryptionError>;

    /// Unwraps a data key that [`wrap`](KeyProvider::wrap) made. Fails with
    /// [`EncryptionErrorKind::UnknownKey`] when the key id is not (or no
    /// longer) held, and [`EncryptionErrorKind::Tampered`] when the bytes or
    /// the context changed.
    fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<SecretKey, EncryptionError>;
}

/// Key-encryption keys by id, held in memory: the newest (last added) wraps
/// new data keys, older ones still unwrap, so rotating is adding a key, and
/// retiring one is removing it once no event needs it (see
/// [Rotation](super#rotation) for moving events to the newest key).
///
/// The text form, for a file or an environment variable, is one `id=key`
/// entry per line or comma-separated, the key in base64 (32 bytes), oldest
/// first; blank lines and lines starting with `#` are skipped:
///
/// ```
/// # use jetevents::encryption::Keyring;
/// // `openssl rand -base64 32` makes a key.
/// let keyring = Keyring::parse(
///     "2026-01=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\
///      2026-06=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
/// )?;
/// assert_eq!(keyring.current_key_id(), "2026-06");
/// // Debug shows key ids, never keys.
/// assert!(!format!("{keyring:?}").contains("AQEB"));
/// # Ok::<(), jetevents::encryption::EncryptionError>(())
/// ```
#[derive(Clone, Default)]
pub struct Keyring {
    /// Oldest first; the last one is current.
    keys: Vec<(String, SecretKey)>,
}

impl Keyring {
    /// An empty keyring: add at least one key before it wraps.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` under `id` as the newest key (replacing a key of that id).
    pub fn with_key(mut self, id: impl Into<String>, key: [u8; KEY_LEN]) -> Self {
        let id = id.into();
        self.keys.retain(|(held, _)| *held != id);
        self.keys.push((id, SecretKey::new(key)));
        self
    }

    /// Removes the key `id`: events it wrapped can no longer be read.
    pub fn without_key(mut self, id: &str) -> Self {
        self.keys.retain(|(held, _)| held != id);
        self
    }

    /// The id of the key that wraps new data keys.
    pub fn current_key_id(&self) -> &str {
        self.keys.last().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    /// Reads the text form (see the type's docs).
    pub fn parse(text: &str) -> Result<Self, EncryptionError> {
        let mut keyring = Self::new();
        let entries = text
            .split(['\n', ','])
            .map(str::trim)
            .enumerate()
            .filter(|(_, entry)| !entry.is_empty() && !entry.starts_with('#'));
        for (index, entry) in entries {
            let invalid = |reason| {
                EncryptionError::new(EncryptionErrorKind::InvalidKeyring {
                    entry: index + 1,
                    reason,
                })
            };
            let (id, encoded) = entry
                .split_once('=')
                .ok_or_else(|| invalid("expected id=base64 key"))?;
            let id = id.trim();
            if id.is_empty() {
                return Err(invalid("empty key id"));
            }
            // Wiped on drop: the decoded key is a copy of the secret.
            let decoded = zeroize::Zeroizing::new(
                crate::codec::base64::decode(encoded.trim())
                    .ok_or_else(|| invalid("key is not base64"))?,
            );
            let key: [u8; KEY_LEN] = decoded
                .as_slice()
                .try_into()
                .map_err(|_| invalid("key is not 32 bytes"))?;
            keyring = keyring.with_key(id, key);
        }
        if keyring.keys.is_empty() {
            return Err(EncryptionError::new(EncryptionErrorKind::InvalidKeyring {
                entry: 0,
                reason: "no keys",
            }));
        }
        Ok(keyring)
    }

    /// Reads the text form from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, EncryptionError> {
        let text = zeroize::Zeroizing::new(std::env::var(name).map_err(|err| {
            EncryptionError::with_source(
                EncryptionErrorKind::KeyringSource(format!("environment variable {name}")),
                err,
            )
        })?);
        Self::parse(&text)
    }

    /// Reads the text form from the file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, EncryptionError> {
        let path = path.as_ref();
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|err| {
            EncryptionError::with_source(
                EncryptionErrorKind::KeyringSource(format!("file {}", path.display())),
                err,
            )
        })?);
        Self::parse(&text)
    }

    fn key(&self, id: &str) -> Option<&SecretKey> {
        self.keys
            .iter()
            .rev()
            .find(|(held, _)| held == id)
            .map(|(_, key)| key)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl KeyProvider for Keyring {
    fn wrap(
        &self,
        data_key: &[u8; KEY_LEN],
        context: &[u8],
    ) -> Result<WrappedKey, EncryptionError> {
        let (key_id, key) = self.keys.last().ok_or_else(|| {
            EncryptionError::new(EncryptionErrorKind::UnknownKey {
                key_id: String::new(),
            })
        })?;
        Ok(WrappedKey {
            key_id: key_id.clone(),
            bytes: cipher::seal(key, data_key, context)?,
        })
    }

    fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<SecretKey, EncryptionError> {
        let key = self.key(&wrapped.key_id).ok_or_else(|| {
            EncryptionError::new(EncryptionErrorKind::UnknownKey {
                key_id: wrapped.key_id.clone(),
            })
        })?;
        let plain = cipher::open(key, &wrapped.bytes, context)?;
        let data_key: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| {
            EncryptionError::new(EncryptionErrorKind::Malformed("wrapped key length"))
        })?;
        Ok(SecretKey::new(data_key))
    }
}
