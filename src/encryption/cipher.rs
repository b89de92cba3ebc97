//! XChaCha20-Poly1305 with a random 24-byte nonce stored in front of the
//! ciphertext: the one primitive that both wraps data keys and encrypts data.
//! Its 192-bit nonces can be drawn at random without a birthday bound worth
//! counting, so a key-encryption key wraps any number of data keys.

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::error::{EncryptionError, EncryptionErrorKind};

/// The algorithm's name in the `encalg` extension.
pub(super) const ALGORITHM: &str = "xchacha20poly1305";
/// Bytes in a key.
pub(super) const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

/// A 256-bit key, wiped from memory when dropped.
pub(super) type SecretKey = Zeroizing<[u8; KEY_LEN]>;

/// A fresh random key.
pub(super) fn random_key() -> Result<SecretKey, EncryptionError> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(key.as_mut())
        .map_err(|_| EncryptionError::new(EncryptionErrorKind::Random))?;
    Ok(key)
}

/// `nonce || ciphertext-and-tag` of `plaintext` bound to `aad`.
pub(super) fn seal(
    key: &[u8; KEY_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, EncryptionError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|_| EncryptionError::new(EncryptionErrorKind::Random))?;
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Only a plaintext over 256 GiB fails here.
        .map_err(|_| EncryptionError::new(EncryptionErrorKind::Malformed("plaintext too long")))?;
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    Ok(sealed)
}

/// The plaintext of what [`seal`] made with the same key and `aad`.
pub(super) fn open(
    key: &[u8; KEY_LEN],
    sealed: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EncryptionError> {
    if sealed.len() < NONCE_LEN {
        return Err(EncryptionError::new(EncryptionErrorKind::Tampered));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| EncryptionError::new(EncryptionErrorKind::Tampered))
}
