//! Bearer JWTs: HS256, RS256 and EdDSA (Ed25519) signatures checked against a
//! configured key set, on the `ring` that async-nats already links.
//!
//! A token comes from the `Authorization: Bearer` header, else the
//! `jetevents_token` cookie, else the `token` query parameter: a browser's
//! `EventSource` cannot set headers. Its claims must hold `exp` and may hold
//! `nbf`, `sub` and `events: {"types": [...], "patterns": [...]}`, the
//! [`Grants`] of what the bearer may see.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::{hmac, signature};
use serde::Deserialize;

use crate::filter::Grants;

/// The cookie a browser page may carry its token in.
pub const TOKEN_COOKIE: &str = "jetevents_token";

/// One verification key.
#[derive(Clone, Debug)]
enum Key {
    Hs256(Vec<u8>),
    Rs256 { n: Vec<u8>, e: Vec<u8> },
    EdDsa(Vec<u8>),
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Hs256(_) => "HS256",
            Key::Rs256 { .. } => "RS256",
            Key::EdDsa(_) => "EdDSA",
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Key::Hs256(secret) => hmac::verify(
                &hmac::Key::new(hmac::HMAC_SHA256, secret),
                message,
                signature,
            )
            .is_ok(),
            Key::Rs256 { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Key::EdDsa(public) => signature::UnparsedPublicKey::new(&signature::ED25519, public)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// The keys tokens are verified with, each with an optional `kid`.
///
/// ```
/// use jetevents_gateway::KeySet;
/// let keys = KeySet::new().with_hs256(Some("k1"), b"a long random secret".to_vec());
/// assert!(keys.verify("not.a.token").is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<(Option<String>, Key)>,
}

/// Why a token is refused (401).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No token in the header, cookie or query.
    #[error("no token")]
    Missing,
    /// Not a JWT, an unknown algorithm or key, or a bad signature.
    #[error("invalid token")]
    Invalid,
    /// Past its `exp` or before its `nbf`.
    #[error("token expired or not yet valid")]
    Expired,
}

impl AuthError {
    /// A low-cardinality label for metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
        }
    }
}

/// A JWK set document that is not one this gateway can use.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWK set: {0}")]
pub struct InvalidKeySet(String);

/// The verified claims of a token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Claims {
    /// `sub`, when present: connection limits per token count by it.
    pub subject: Option<String>,
    /// `exp`: the stream ends with a final event then.
    pub expires_at: SystemTime,
    /// What the bearer may see.
    pub grants: Grants,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    events: Grants,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

fn b64(value: Option<&str>, what: &str) -> Result<Vec<u8>, InvalidKeySet> {
    let value = value.ok_or_else(|| InvalidKeySet(format!("missing {what}")))?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|e| InvalidKeySet(format!("{what}: {e}")))
}

impl KeySet {
    /// An empty set: every token is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an HS256 secret.
    pub fn with_hs256(mut self, kid: Option<&str>, secret: Vec<u8>) -> Self {
        self.keys.push((kid.map(Into::into), Key::Hs256(secret)));
        self
    }

    /// Adds an RS256 public key from its modulus and exponent (big-endian).
    pub fn with_rs256(mut self, kid: Option<&str>, modulus: Vec<u8>, exponent: Vec<u8>) -> Self {
        let key = Key::Rs256 {
            n: modulus,
            e: exponent,
        };
        self.keys.push((kid.map(Into::into), key));
        self
    }

    /// Adds an Ed25519 public key (32 bytes).
    pub fn with_ed25519(mut self, kid: Option<&str>, public_key: Vec<u8>) -> Self {
        self.keys
            .push((kid.map(Into::into), Key::EdDsa(public_key)));
        self
    }

    /// Reads a JWK set (`{"keys": [...]}`) of `oct`, `RSA` and `OKP`/`Ed25519` keys.
    ///
    /// ```
    /// let keys = jetevents_gateway::KeySet::from_jwks(
    ///     r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0LXNlY3JldA"}]}"#,
    /// ).unwrap();
    /// # let _ = keys;
    /// ```
    pub fn from_jwks(json: &str) -> Result<Self, InvalidKeySet> {
        let jwks: Jwks = serde_json::from_str(json).map_err(|e| InvalidKeySet(e.to_string()))?;
        let mut set = Self::new();
        for jwk in jwks.keys {
            let kid = jwk.kid.as_deref();
            set = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
                ("oct", _) => set.with_hs256(kid, b64(jwk.k.as_deref(), "k")?),
                ("RSA", _) => set.with_rs256(
                    kid,
                    b64(jwk.n.as_deref(), "n")?,
                    b64(jwk.e.as_deref(), "e")?,
                ),
                ("OKP", Some("Ed25519")) => set.with_ed25519(kid, b64(jwk.x.as_deref(), "x")?),
                (kty, crv) => return Err(InvalidKeySet(format!("unsupported key {kty} {crv:?}"))),
            };
        }
        Ok(set)
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, SystemTime::now())
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid);
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Invalid);
        let header: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| AuthError::Invalid)?;
        let signature = decode(signature)?;
        let signed = &token.as_bytes()[..token.len() - signature_len(token)];
        // The algorithm comes from the key, never from the token alone: a key
        // only verifies tokens of its own algorithm ("none" matches no key).
        let verified = self
            .keys
            .iter()
            .filter(|(kid, key)| {
                key.alg() == header.alg && (header.kid.is_none() || header.kid == *kid)
            })
            .any(|(_, key)| key.verify(signed, &signature));
        if !verified {
            return Err(AuthError::Invalid);
        }
        let claims: RawClaims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| AuthError::Invalid)?;
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if claims.exp <= now_secs || claims.nbf.is_some_and(|nbf| nbf > now_secs) {
            return Err(AuthError::Expired);
        }
        Ok(Claims {
            subject: claims.sub,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
            grants: claims.events,
        })
    }
}

/// Length of `.signature` at the end of a three-part token.
fn signature_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

/// The token of a request: bearer header, cookie, then query parameter.
pub(crate) fn token_of<'a>(
    headers: &'a HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = || {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == TOKEN_COOKIE)
            .map(|(_, value)| value)
    };
    bearer.or_else(cookie).or(query_token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use ring::signature::KeyPair;

    fn sign_with(alg: &str, claims: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
        let payload = URL_SAFE_NO_PAD.encode(claims);
        let signed = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(sign(signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    #[test]
    fn hs256_and_eddsa_verify_and_algorithms_do_not_mix() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let keys = KeySet::new()
            .with_hs256(None, secret)
            .with_ed25519(None, pair.public_key().as_ref().to_vec());
        let claims = r#"{"exp":4000000000,"sub":"u","events":{"types":["a.b.c.v1"]}}"#;
        let hs = sign_with("HS256", claims, |m| {
            hmac::sign(&hmac_key, m).as_ref().to_vec()
        });
        let ed = sign_with("EdDSA", claims, |m| pair.sign(m).as_ref().to_vec());
        assert_eq!(keys.verify(&hs).unwrap().grants.types, ["a.b.c.v1"]);
        assert_eq!(keys.verify(&ed).unwrap().subject.as_deref(), Some("u"));
        // An HMAC signature presented as EdDSA, and an unsigned token.
        let swapped = sign_with("EdDSA", claims, |m| {
            hmac::sign(&hmac_key, m).as_ref().to_vec()
        });
        assert_eq!(keys.verify(&swapped).unwrap_err(), AuthError::Invalid);
        assert_eq!(
            keys.verify(&sign_with("none", claims, |_| vec![]))
                .unwrap_err(),
            AuthError::Invalid
        );
        let expired = sign_with("HS256", r#"{"exp":1}"#, |m| {
            hmac::sign(&hmac_key, m).as_ref().to_vec()
        });
        assert_eq!(keys.verify(&expired).unwrap_err(), AuthError::Expired);
    }
}
