//! The error of sealing or opening an event's data.
//!
//! No kind carries key material or data: a message names at most a key id,
//! an algorithm name or a line number, so errors are safe to log.

use std::fmt;

use crate::Error;

/// Error of encrypting or decrypting an event's data, or of loading keys.
pub type EncryptionError = Error<EncryptionErrorKind>;

/// Why data could not be encrypted or decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncryptionErrorKind {
    /// The event names a key-encryption key the provider does not have
    /// (never had, or removed after rotation).
    UnknownKey {
        /// The key id the event names.
        key_id: String,
    },
    /// Authentication failed: the ciphertext, the wrapped key or an attribute
    /// bound to them (id, type, source, subject) was changed, or the key with
    /// this id is not the one that encrypted it.
    Tampered,
    /// An encryption extension is missing or not in its format.
    Malformed(&'static str),
    /// The event was encrypted with an algorithm this version does not know.
    UnsupportedAlgorithm(String),
    /// The operating system's random number generator failed.
    Random,
    /// A keyring is empty or one of its entries is not `id=base64 of 32 bytes`.
    InvalidKeyring {
        /// Where: the entry's 1-based line (or comma-separated item) number.
        entry: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Encrypting per aggregate: the aggregate's key was not loaded first
    /// ([`Encryption::load`](super::Encryption::load)), or decrypting an
    /// aggregate's event without [`AggregateKeys`](super::AggregateKeys).
    NotLoaded,
    /// The aggregate's data key was deleted: its events are shredded.
    Shredded,
    /// The KV bucket of aggregate keys could not be read or written.
    KeyStore(String),
    /// The keyring's source (file or environment variable) could not be read.
    KeyringSource(String),
    /// Re-publishing a stream's events with rewrapped keys failed (reading
    /// the stream, decoding or publishing an event).
    Republish(String),
}

impl fmt::Display for EncryptionErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey { key_id } => write!(f, "no key-encryption key with id {key_id:?}"),
            Self::Tampered => f.write_str(
                "authentication failed: data, wrapped key or bound attributes were changed, or the wrong key",
            ),
            Self::Malformed(what) => write!(f, "malformed encryption extension: {what}"),
            Self::UnsupportedAlgorithm(name) => write!(f, "unsupported algorithm {name:?}"),
            Self::Random => f.write_str("the system's random number generator failed"),
            Self::InvalidKeyring { entry, reason } => {
                write!(f, "invalid keyring entry {entry}: {reason}")
            }
            Self::NotLoaded => f.write_str("no aggregate data key loaded for this event"),
            Self::Shredded => f.write_str("the aggregate's data key was deleted (shredded)"),
            Self::KeyStore(what) => write!(f, "aggregate key store {what} unavailable"),
            Self::KeyringSource(what) => write!(f, "cannot read the keyring from {what}"),
            Self::Republish(what) => write!(f, "re-publishing {what} failed"),
        }
    }
}
