//! The errors of making an envelope (or encoding it) and of reading one
//! (or decoding a message into one).

use std::fmt;

use crate::Error;

/// Error of encoding an envelope.
pub type EncodeError = Error<EncodeErrorKind>;
/// Error of decoding a message (or an envelope's data).
pub type DecodeError = Error<DecodeErrorKind>;

/// Why an envelope could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeErrorKind {
    /// An extension name is not lower-case ASCII letters and digits, or is a
    /// core attribute name.
    InvalidExtensionName(String),
    /// The event data did not serialize to JSON.
    Serialize,
    /// An attribute value is not allowed (empty required attribute, control
    /// characters, time outside years 0..=9999).
    InvalidAttribute {
        /// Attribute name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
}

impl fmt::Display for EncodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidExtensionName(name) => write!(f, "invalid extension name {name:?}"),
            Self::Serialize => f.write_str("event data did not serialize to JSON"),
            Self::InvalidAttribute { name, reason } => {
                write!(f, "invalid attribute {name}: {reason}")
            }
        }
    }
}

/// Why a message could not be decoded into an envelope, or an envelope's
/// data into an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// A required attribute (`specversion`, `id`, `source`, `type`) is absent.
    MissingAttribute(&'static str),
    /// `specversion` is not `1.0`.
    UnsupportedSpecVersion(String),
    /// A header value is not valid UTF-8 after percent-decoding (overlong
    /// forms included) or contains control characters.
    InvalidHeaderValue {
        /// Header name as received.
        header: String,
    },
    /// The structured payload is not a JSON object.
    InvalidJson,
    /// An attribute is present but invalid (empty id, bad time, duplicate,
    /// wrong JSON type, invalid extension name, ...).
    InvalidAttribute {
        /// Attribute name.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The data did not deserialize into the requested event type.
    InvalidData,
    /// The content type cannot be handled: a structured event format other
    /// than JSON, or non-JSON data asked for as a typed event.
    UnsupportedContentType(String),
    /// The envelope's `type` is not the requested event type's `TYPE`.
    TypeMismatch {
        /// The requested type.
        expected: String,
        /// The envelope's type.
        actual: String,
    },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAttribute(name) => write!(f, "missing required attribute {name}"),
            Self::UnsupportedSpecVersion(v) => write!(f, "unsupported specversion {v:?}"),
            Self::InvalidHeaderValue { header } => write!(f, "invalid value in header {header}"),
            Self::InvalidJson => f.write_str("payload is not a CloudEvents JSON object"),
            Self::InvalidAttribute { name, reason } => {
                write!(f, "invalid attribute {name}: {reason}")
            }
            Self::InvalidData => f.write_str("event data did not deserialize"),
            Self::UnsupportedContentType(ct) => write!(f, "unsupported content type {ct:?}"),
            Self::TypeMismatch { expected, actual } => {
                write!(f, "event type is {actual:?}, expected {expected:?}")
            }
        }
    }
}
