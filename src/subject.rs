//! Subject names and consumer filters built from validated tokens.
//!
//! Every event lives on `{env}.{domain}.{entity}.{action}.{version}[.{key}]`.
//! Each token that comes from user input is either validated
//! ([`validate_token`]) or escaped ([`escape_key`]), so a `.`, `*`, `>`,
//! whitespace or control character can never reach the wire by accident and
//! turn a literal subject into a wildcard or change its token count.
//!
//! # Token rules
//!
//! A token accepted by [`validate_token`] is non-empty printable ASCII
//! (`U+0021..=U+007E`) without `.`, `*` or `>`. Non-ASCII is rejected on
//! purpose: the NATS server accepts UTF-8 subjects, but other clients,
//! monitoring tools and ACL files handle them unevenly. Keys that may contain
//! anything (emails, paths, unicode names) go through [`escape_key`] instead.
//!
//! # Key escaping
//!
//! [`escape_key`] keeps ASCII letters, digits and `-_@:+=,!~` as they are, so
//! plain ids stay readable (`a1b2-c3` stays `a1b2-c3`), and writes every other
//! byte of the key's UTF-8 form as `%XX` with upper-case hex (`ana.lima@x.io`
//! becomes `ana%2Elima@x%2Eio`). The escaping is canonical: [`unescape_key`]
//! accepts only what [`escape_key`] produces, so one key has exactly one token
//! and a consumer filtering on a key's token sees all of that key's events.

use crate::event::{Event, EventType};
use crate::Error;

pub(crate) use crate::token::validate_name_token;
pub use crate::token::{validate_token, SubjectError, SubjectErrorKind, MAX_TOKEN_LEN};

/// Longest escaped key token [`escape_key`] produces.
///
/// The server limits its protocol control line (4 KiB by default) and the
/// subject shares it with the reply subject and headers size; 256 bytes leaves
/// room for long environment and type tokens.
pub const MAX_KEY_TOKEN_LEN: usize = 256;

/// Whether `byte` stays as it is in an escaped key.
fn is_key_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'_' | b'@' | b':' | b'+' | b'=' | b',' | b'!' | b'~'
        )
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Turns any key (email, path, unicode name, ...) into exactly one literal
/// subject token, reversibly (see the [module docs](self) for the scheme).
///
/// Fails on an empty key and when the escaped token would be longer than
/// [`MAX_KEY_TOKEN_LEN`].
///
/// ```
/// use jetevents::subject::{escape_key, unescape_key};
///
/// assert_eq!(escape_key("a1b2-c3").unwrap(), "a1b2-c3");
/// assert_eq!(escape_key("ana.lima@x.io").unwrap(), "ana%2Elima@x%2Eio");
/// assert_eq!(unescape_key("ana%2Elima@x%2Eio").unwrap(), "ana.lima@x.io");
/// ```
pub fn escape_key(key: &str) -> Result<String, SubjectError> {
    if key.is_empty() {
        return Err(Error::new(SubjectErrorKind::EmptyToken));
    }
    let len: usize = key
        .bytes()
        .map(|b| if is_key_safe(b) { 1 } else { 3 })
        .sum();
    if len > MAX_KEY_TOKEN_LEN {
        return Err(Error::new(SubjectErrorKind::KeyTooLong {
            len,
            limit: MAX_KEY_TOKEN_LEN,
        }));
    }
    if len == key.len() {
        // Nothing to escape (the usual key): copied whole, not byte by byte.
        return Ok(key.to_owned());
    }
    let mut out = String::with_capacity(len);
    for byte in key.bytes() {
        if is_key_safe(byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        }
    }
    Ok(out)
}

fn upper_hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Reverses [`escape_key`].
///
/// Only the canonical form is accepted: upper-case hex, no escaped safe
/// characters, no unescaped unsafe ones, valid UTF-8 after decoding.
///
/// ```
/// use jetevents::subject::unescape_key;
///
/// assert_eq!(unescape_key("caf%C3%A9").unwrap(), "café");
/// assert!(unescape_key("caf%c3%a9").is_err()); // not canonical
/// ```
pub fn unescape_key(token: &str) -> Result<String, SubjectError> {
    let invalid = || {
        Error::new(SubjectErrorKind::InvalidEscape {
            token: token.to_owned(),
        })
    };
    if token.is_empty() {
        return Err(Error::new(SubjectErrorKind::EmptyToken));
    }
    if token.len() > MAX_KEY_TOKEN_LEN {
        return Err(Error::new(SubjectErrorKind::KeyTooLong {
            len: token.len(),
            limit: MAX_KEY_TOKEN_LEN,
        }));
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(upper_hex_value);
            let lo = bytes.get(i + 2).copied().and_then(upper_hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(invalid());
            };
            let decoded = (hi << 4) | lo;
            if is_key_safe(decoded) {
                return Err(invalid());
            }
            out.push(decoded);
            i += 3;
        } else if is_key_safe(byte) {
            out.push(byte);
            i += 1;
        } else {
            return Err(invalid());
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// Tokens of an event subject before its key: `{env}` and the four of the
/// type.
const TOKENS_BEFORE_KEY: usize = 5;

/// The subject with its key token replaced by `{key}`: the same for every
/// event of a type, so it can name spans and group metrics (semantic
/// conventions: `messaging.destination.template`) where the subject itself,
/// one per key, would make a name per aggregate. A subject without a key,
/// or not in the `{env}.{domain}.{entity}.{action}.{version}[.{key}]`
/// shape, is returned as it is.
///
/// ```
/// use jetevents::subject::destination_template;
///
/// assert_eq!(
///     destination_template("prod.booking.appointment.confirmed.v1.a-42"),
///     "prod.booking.appointment.confirmed.v1.{key}"
/// );
/// assert_eq!(
///     destination_template("prod.booking.appointment.confirmed.v1"),
///     "prod.booking.appointment.confirmed.v1"
/// );
/// ```
pub fn destination_template(subject: &str) -> std::borrow::Cow<'_, str> {
    match before_key(subject) {
        Some(prefix) => std::borrow::Cow::Owned(format!("{prefix}.{{key}}")),
        None => std::borrow::Cow::Borrowed(subject),
    }
}

/// The subject up to (without) the dot before its key, when it has a key:
/// [`destination_template`] is this followed by `.{key}`.
pub(crate) fn before_key(subject: &str) -> Option<&str> {
    let mut dots = subject.match_indices('.').map(|(index, _)| index);
    match dots.nth(TOKENS_BEFORE_KEY - 1) {
        Some(end) if !subject[end + 1..].contains('.') => subject.get(..end),
        _ => None,
    }
}

/// Builds subjects and consumer filters for one environment.
///
/// ```
/// use jetevents::event::EventType;
/// use jetevents::subject::Subjects;
///
/// let subjects = Subjects::new("prod").unwrap();
/// let ty = EventType::parse("booking.appointment.confirmed.v1").unwrap();
/// assert_eq!(
///     subjects.event(&ty, Some("a-42")).unwrap(),
///     "prod.booking.appointment.confirmed.v1.a-42"
/// );
/// assert_eq!(subjects.domain("booking").unwrap(), "prod.booking.>");
/// ```
#[derive(Clone, Debug)]
pub struct Subjects {
    env: String,
}

impl Subjects {
    /// Subjects under the environment token `env` (e.g. `prod`, `staging`).
    pub fn new(env: impl Into<String>) -> Result<Subjects, SubjectError> {
        let env = env.into();
        validate_name_token(&env)?;
        Ok(Subjects { env })
    }

    /// Subjects of the test kit's environment, `test`, a valid token.
    #[cfg(feature = "testing")]
    pub(crate) fn for_tests() -> Subjects {
        Subjects {
            env: "test".to_owned(),
        }
    }

    /// The environment token.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The literal subject of an event of `event_type` with an optional key:
    /// `{env}.{domain}.{entity}.{action}.{version}[.{escaped key}]`.
    ///
    /// ```
    /// # use jetevents::{event::EventType, subject::Subjects};
    /// let subjects = Subjects::new("dev").unwrap();
    /// let ty = EventType::parse("iam.user.created.v2").unwrap();
    /// assert_eq!(
    ///     subjects.event(&ty, Some("ana@x.io")).unwrap(),
    ///     "dev.iam.user.created.v2.ana@x%2Eio"
    /// );
    /// assert_eq!(subjects.event(&ty, None).unwrap(), "dev.iam.user.created.v2");
    /// ```
    pub fn event(&self, event_type: &EventType, key: Option<&str>) -> Result<String, SubjectError> {
        let ty = event_type.as_str();
        match key {
            None => {
                let mut subject = String::with_capacity(self.env.len() + 1 + ty.len());
                subject.push_str(&self.env);
                subject.push('.');
                subject.push_str(ty);
                Ok(subject)
            }
            Some(key) => {
                let key = escape_key(key)?;
                let mut subject = String::with_capacity(self.env.len() + ty.len() + key.len() + 2);
                subject.push_str(&self.env);
                subject.push('.');
                subject.push_str(ty);
                subject.push('.');
                subject.push_str(&key);
                Ok(subject)
            }
        }
    }

    /// The subject of `event`, from `E::TYPE` and `event.key()`.
    ///
    /// ```
    /// # use jetevents::{event::Event, subject::Subjects};
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct UserCreated { id: String }
    /// impl Event for UserCreated {
    ///     const TYPE: &'static str = "iam.user.created.v1";
    ///     fn key(&self) -> Option<String> { Some(self.id.clone()) }
    /// }
    /// let subjects = Subjects::new("dev").unwrap();
    /// let subject = subjects.for_event(&UserCreated { id: "u1".into() }).unwrap();
    /// assert_eq!(subject, "dev.iam.user.created.v1.u1");
    /// ```
    pub fn for_event<E: Event>(&self, event: &E) -> Result<String, SubjectError> {
        let event_type = EventType::of::<E>()?;
        self.event(&event_type, event.key().as_deref())
    }

    /// Every subject of one domain, `{env}.{domain}.>`: a stream's subject set.
    pub fn domain(&self, domain: &str) -> Result<String, SubjectError> {
        validate_token(domain)?;
        Ok(format!("{}.{}.>", self.env, domain))
    }

    /// Consumer filters matching every event of `event_type`, with and without
    /// a key token.
    ///
    /// ```
    /// # use jetevents::{event::EventType, subject::Subjects};
    /// let subjects = Subjects::new("dev").unwrap();
    /// let ty = EventType::parse("iam.user.created.v1").unwrap();
    /// assert_eq!(
    ///     subjects.filters_for_type(&ty),
    ///     ["dev.iam.user.created.v1", "dev.iam.user.created.v1.*"]
    /// );
    /// ```
    pub fn filters_for_type(&self, event_type: &EventType) -> Vec<String> {
        let base = format!("{}.{}", self.env, event_type.as_str());
        let keyed = format!("{base}.*");
        vec![base, keyed]
    }

    /// Consumer filters for a glob over the four type tokens.
    ///
    /// Each token is a literal token, `*` (any one token) or, in last position
    /// only, `>` (everything below, keyed or not). A glob of fewer than four
    /// tokens ending in `*` is padded with `*` to four tokens. Without `>`,
    /// two filters are returned: with and without the key token.
    ///
    /// ```
    /// # use jetevents::subject::Subjects;
    /// let subjects = Subjects::new("dev").unwrap();
    /// assert_eq!(
    ///     subjects.filters_for_pattern("booking.appointment.*").unwrap(),
    ///     ["dev.booking.appointment.*.*", "dev.booking.appointment.*.*.*"]
    /// );
    /// assert_eq!(subjects.filters_for_pattern("booking.>").unwrap(), ["dev.booking.>"]);
    /// assert!(subjects.filters_for_pattern("booking.appointment").is_err());
    /// ```
    pub fn filters_for_pattern(&self, pattern: &str) -> Result<Vec<String>, SubjectError> {
        let invalid = |reason: &'static str| {
            Error::new(SubjectErrorKind::InvalidPattern {
                pattern: pattern.to_owned(),
                reason,
            })
        };
        if pattern.is_empty() {
            return Err(invalid("empty pattern"));
        }
        let tokens: Vec<&str> = pattern.split('.').collect();
        let last = tokens.len() - 1;
        for (i, token) in tokens.iter().enumerate() {
            match *token {
                "*" => {}
                ">" if i == last => {}
                ">" => return Err(invalid("'>' is only allowed as the last token")),
                token => validate_token(token).map_err(|_| invalid("invalid token"))?,
            }
        }
        if tokens[last] == ">" {
            if tokens.len() > 4 {
                return Err(invalid("more than four type tokens"));
            }
            return Ok(vec![format!("{}.{}", self.env, pattern)]);
        }
        let mut base = format!("{}.{}", self.env, pattern);
        match tokens.len() {
            4 => {}
            1..=3 if tokens[last] == "*" => {
                for _ in tokens.len()..4 {
                    base.push_str(".*");
                }
            }
            1..=3 => {
                return Err(invalid(
                    "fewer than four type tokens: end it with '*' or '>'",
                ))
            }
            _ => return Err(invalid("more than four type tokens")),
        }
        let keyed = format!("{base}.*");
        Ok(vec![base, keyed])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn only_the_key_token_of_an_event_subject_becomes_a_placeholder() {
        let subjects = Subjects::new("prod").unwrap();
        let ty = EventType::parse("iam.user.created.v1").unwrap();
        let keyed = subjects.event(&ty, Some("ana.lima@x.io")).unwrap();
        assert_eq!(
            destination_template(&keyed),
            "prod.iam.user.created.v1.{key}"
        );
        let plain = subjects.event(&ty, None).unwrap();
        assert_eq!(destination_template(&plain), plain);
        // Not the event scheme: left alone rather than guessed at.
        for other in ["a.b.c.d.e.f.g", "orders", "a.b.c"] {
            assert_eq!(destination_template(other), other);
        }
    }

    #[test]
    fn escape_examples() {
        assert_eq!(escape_key("a b").unwrap(), "a%20b");
        assert_eq!(escape_key("%").unwrap(), "%25");
        assert_eq!(escape_key(">").unwrap(), "%3E");
        assert_eq!(escape_key("é").unwrap(), "%C3%A9");
    }

    #[test]
    fn unescape_rejects_non_canonical() {
        assert!(unescape_key("%41").is_err());
        assert!(unescape_key("a.b").is_err());
        assert!(unescape_key("%2").is_err());
        assert!(unescape_key("%C3").is_err());
        assert!(unescape_key("%C0%AE").is_err());
    }

    #[test]
    fn key_limit() {
        let key = "a".repeat(MAX_KEY_TOKEN_LEN);
        assert!(escape_key(&key).is_ok());
        let err = escape_key(&format!("{key}a")).unwrap_err();
        assert_eq!(
            err.kind(),
            &SubjectErrorKind::KeyTooLong {
                len: MAX_KEY_TOKEN_LEN + 1,
                limit: MAX_KEY_TOKEN_LEN
            }
        );
    }
}
