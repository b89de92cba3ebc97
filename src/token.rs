//! What may be one token of a subject, and the error of every part of a
//! subject. Event types are made of such tokens too, so this sits below
//! both [`event`](crate::event) and [`subject`](crate::subject).

use std::fmt;

use crate::Error;

/// Error of building or validating a subject, token, key or filter pattern.
pub type SubjectError = Error<SubjectErrorKind>;

/// Longest environment token and event-type part. With
/// [`MAX_KEY_TOKEN_LEN`](crate::subject::MAX_KEY_TOKEN_LEN) for the key, a whole event subject stays far below the
/// server's control-line limit (4 KiB by default), which a subject shares with
/// the reply inbox and the header size.
pub const MAX_TOKEN_LEN: usize = 64;

/// [`validate_token`] plus the [`MAX_TOKEN_LEN`] limit, for the tokens that
/// come from configuration and type names rather than escaped keys.
pub(crate) fn validate_name_token(token: &str) -> Result<(), SubjectError> {
    validate_token(token)?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::new(SubjectErrorKind::InvalidToken {
            token: token.chars().take(32).chain("…".chars()).collect(),
            reason: "longer than MAX_TOKEN_LEN (64 bytes)",
        }));
    }
    Ok(())
}

/// What was wrong with a subject token, key, event type or pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubjectErrorKind {
    /// A token (or key) was empty.
    EmptyToken,
    /// A token contained a character that is not allowed in a literal token.
    InvalidToken {
        /// The offending token.
        token: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The escaped key is longer than [`MAX_KEY_TOKEN_LEN`](crate::subject::MAX_KEY_TOKEN_LEN).
    KeyTooLong {
        /// Length of the escaped key in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// An event type was not `{domain}.{entity}.{action}.{version}`.
    InvalidEventType {
        /// The offending type.
        event_type: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A type filter pattern was malformed.
    InvalidPattern {
        /// The offending pattern.
        pattern: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A key token was not produced by [`escape_key`](crate::subject::escape_key).
    InvalidEscape {
        /// The offending token.
        token: String,
    },
}

impl fmt::Display for SubjectErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyToken => f.write_str("empty subject token"),
            Self::InvalidToken { token, reason } => {
                write!(f, "invalid subject token {token:?}: {reason}")
            }
            Self::KeyTooLong { len, limit } => {
                write!(f, "escaped key is {len} bytes, the limit is {limit}")
            }
            Self::InvalidEventType { event_type, reason } => {
                write!(f, "invalid event type {event_type:?}: {reason}")
            }
            Self::InvalidPattern { pattern, reason } => {
                write!(f, "invalid type pattern {pattern:?}: {reason}")
            }
            Self::InvalidEscape { token } => write!(f, "invalid escaped key token {token:?}"),
        }
    }
}

/// Checks that `token` can be used as one literal subject token.
///
/// Rejects empty tokens, `.`, `*`, `>`, whitespace, control characters and
/// non-ASCII (see the [subject module docs](crate::subject)).
///
/// ```
/// use jetevents::subject::validate_token;
///
/// assert!(validate_token("booking").is_ok());
/// assert!(validate_token("a.b").is_err());
/// assert!(validate_token("*").is_err());
/// assert!(validate_token("").is_err());
/// ```
pub fn validate_token(token: &str) -> Result<(), SubjectError> {
    if token.is_empty() {
        return Err(Error::new(SubjectErrorKind::EmptyToken));
    }
    for byte in token.bytes() {
        let reason = match byte {
            b'.' => "contains '.'",
            b'*' | b'>' => "contains a wildcard",
            b' ' | b'\t' | b'\r' | b'\n' | b'\x0b' | b'\x0c' => "contains whitespace",
            0..=0x1f | 0x7f => "contains a control character",
            0x80..=0xff => "contains non-ASCII characters",
            _ => continue,
        };
        return Err(Error::new(SubjectErrorKind::InvalidToken {
            token: token.to_owned(),
            reason,
        }));
    }
    Ok(())
}
