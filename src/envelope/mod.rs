//! CloudEvents 1.0 attributes and extensions around an event's data.
//!
//! An [`Envelope`] is what travels: the required attributes (`id`, `source`,
//! `type`; `specversion` is always `1.0`), the optional ones, the extensions
//! (`correlationid`, `causationid`, `traceparent`, `tracestate`,
//! `partitionkey` and any free-form metadata) and the data as raw bytes.
//! [`codec`](crate::codec) turns it into NATS headers and payload and back.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::Error;

pub(crate) mod content_type;
pub(crate) mod error;
mod extensions;

pub use extensions::{ExtensionName, Extensions, Iter as ExtensionsIter};

use error::{DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind};

/// Extension carrying the id shared by every event of one business flow.
pub const CORRELATION_ID: &str = "correlationid";
/// Extension carrying the id of the event (or command) that caused this one.
pub const CAUSATION_ID: &str = "causationid";
/// Extension carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Extension carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// Extension carrying the aggregate id / partition key.
pub const PARTITION_KEY: &str = "partitionkey";

/// Names that are CloudEvents core attributes or reserved by the JSON format,
/// never extension names.
pub(crate) const RESERVED_NAMES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Whether `name` is a valid extension name: non-empty, lower-case ASCII
/// letters and digits only, and not a core attribute name.
fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !is_reserved_name(name)
}

/// Whether `name` is one of [`RESERVED_NAMES`]; a `match` compiles to a
/// length switch, cheaper than comparing with each name in turn.
fn is_reserved_name(name: &str) -> bool {
    let reserved = matches!(
        name,
        "specversion"
            | "id"
            | "source"
            | "type"
            | "subject"
            | "time"
            | "datacontenttype"
            | "dataschema"
            | "data"
            | "data_base64"
    );
    debug_assert_eq!(reserved, RESERVED_NAMES.contains(&name));
    reserved
}

/// The value of a CloudEvents extension attribute.
///
/// In binary mode every extension travels as a header string, and the
/// header does not say which type it had, so a decoded binary message gives
/// [`ExtensionValue::String`] for all of them (`"true"`, `"42"`); structured
/// mode keeps JSON booleans and integers. Compare by `to_string()` (its
/// `Display`) or use [`ExtensionValue::as_str`] when the mode is not known.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtensionValue {
    /// A string.
    String(String),
    /// A boolean, written `true` / `false`.
    Boolean(bool),
    /// An integer, written in decimal.
    Integer(i64),
}

impl ExtensionValue {
    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            ExtensionValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionValue::String(s) => f.write_str(s),
            ExtensionValue::Boolean(b) => write!(f, "{b}"),
            ExtensionValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(value: &str) -> Self {
        ExtensionValue::String(value.to_owned())
    }
}

impl From<String> for ExtensionValue {
    fn from(value: String) -> Self {
        ExtensionValue::String(value)
    }
}

impl From<bool> for ExtensionValue {
    fn from(value: bool) -> Self {
        ExtensionValue::Boolean(value)
    }
}

impl From<i64> for ExtensionValue {
    fn from(value: i64) -> Self {
        ExtensionValue::Integer(value)
    }
}

/// A new UUIDv7 event id, hyphenated lower-case. Every event gets one, so it
/// is written straight into a buffer rather than through `Display`.
pub(crate) fn new_id() -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}

/// A CloudEvent: attributes, extensions and raw data.
///
/// ```
/// use jetevents::envelope::Envelope;
///
/// let mut envelope = Envelope::new("/booking-service", "booking.appointment.confirmed.v1");
/// envelope.set_correlation_id("flow-17");
/// envelope.set_extension("tenant", "acme").unwrap();
/// assert_eq!(envelope.correlation_id(), Some("flow-17"));
/// assert!(envelope.set_extension("Bad-Name", "x").is_err());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Envelope {
    /// `id`: unique per event from one source; a UUIDv7 by default.
    pub id: String,
    /// `source`: URI-reference of the producer, e.g. `/booking-service`.
    pub source: String,
    /// `type`: `{domain}.{entity}.{action}.{version}`.
    pub event_type: String,
    /// `subject`: what the event is about within the source.
    pub subject: Option<String>,
    /// `time`: when the occurrence happened.
    pub time: Option<DateTime<Utc>>,
    /// `datacontenttype`, e.g. `application/json`.
    pub data_content_type: Option<String>,
    /// `dataschema`: URI of the data's schema.
    pub data_schema: Option<String>,
    /// Extension attributes by name (lower-case ASCII letters and digits).
    pub extensions: Extensions,
    /// The data bytes (JSON text for `application/json`).
    pub data: Option<Bytes>,
}

impl Envelope {
    /// An envelope with a new UUIDv7 `id`, `time` = now and no data.
    pub fn new(source: impl Into<String>, event_type: impl Into<String>) -> Envelope {
        Envelope {
            id: new_id(),
            source: source.into(),
            event_type: event_type.into(),
            subject: None,
            time: Some(Utc::now()),
            data_content_type: None,
            data_schema: None,
            extensions: Extensions::new(),
            data: None,
        }
    }

    /// An envelope carrying `event` as JSON data, with `type` = `E::TYPE`,
    /// `dataschema` from `E::data_schema()` and the `partitionkey` extension
    /// from `event.key()`.
    ///
    /// ```
    /// use jetevents::{envelope::Envelope, event::Event};
    /// # #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// # struct UserCreated { id: String }
    /// # impl Event for UserCreated {
    /// #     const TYPE: &'static str = "iam.user.created.v1";
    /// #     fn key(&self) -> Option<String> { Some(self.id.clone()) }
    /// # }
    /// let event = UserCreated { id: "u1".into() };
    /// let envelope = Envelope::from_event("/iam", &event).unwrap();
    /// assert_eq!(envelope.partition_key(), Some("u1"));
    /// assert_eq!(envelope.decode_data::<UserCreated>().unwrap(), event);
    /// ```
    pub fn from_event<E: Event>(
        source: impl Into<String>,
        event: &E,
    ) -> Result<Envelope, EncodeError> {
        Self::from_event_with_key(source, event, event.key())
    }

    /// [`Envelope::from_event`] with the partition key already known, so a
    /// publisher that needs the key for the subject too asks the event once.
    pub(crate) fn from_event_with_key<E: Event>(
        source: impl Into<String>,
        event: &E,
        key: Option<String>,
    ) -> Result<Envelope, EncodeError> {
        let data = serde_json::to_vec(event)
            .map_err(|err| Error::with_source(EncodeErrorKind::Serialize, err))?;
        let mut envelope = Envelope::new(source, E::TYPE);
        envelope.data_content_type = Some(content_type::APPLICATION_JSON.to_owned());
        envelope.data_schema = E::data_schema().map(str::to_owned);
        if let Some(key) = key {
            envelope
                .extensions
                .set(ExtensionName::PARTITION_KEY, ExtensionValue::String(key));
        }
        envelope.data = Some(Bytes::from(data));
        Ok(envelope)
    }

    /// Deserializes the JSON data into `E`.
    ///
    /// Fails with [`DecodeErrorKind::TypeMismatch`] when `type` is not
    /// `E::TYPE`, [`DecodeErrorKind::UnsupportedContentType`] when the data is
    /// not JSON (`application/json`, `text/json`, `*/*+json` or no content
    /// type) and [`DecodeErrorKind::InvalidData`] when it does not
    /// deserialize. Absent data deserializes from JSON `null`.
    pub fn decode_data<E: Event>(&self) -> Result<E, DecodeError> {
        if self.event_type != E::TYPE {
            return Err(Error::new(DecodeErrorKind::TypeMismatch {
                expected: E::TYPE.to_owned(),
                actual: self.event_type.clone(),
            }));
        }
        if !content_type::is_json_content_type(self.data_content_type.as_deref()) {
            return Err(Error::new(DecodeErrorKind::UnsupportedContentType(
                self.data_content_type.clone().unwrap_or_default(),
            )));
        }
        let data: &[u8] = self.data.as_deref().unwrap_or(b"null");
        serde_json::from_slice(data)
            .map_err(|err| Error::with_source(DecodeErrorKind::InvalidData, err))
    }

    /// The extension `name`, if set.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions.get(name)
    }

    /// Sets the extension `name`.
    ///
    /// The name must be lower-case ASCII letters and digits and not a core
    /// attribute name (`id`, `type`, `data`, ...).
    pub fn set_extension(
        &mut self,
        name: &str,
        value: impl Into<ExtensionValue>,
    ) -> Result<(), EncodeError> {
        self.extensions.insert(name, value)?;
        Ok(())
    }

    fn string_extension(&self, name: &str) -> Option<&str> {
        self.extensions.get(name).and_then(ExtensionValue::as_str)
    }

    fn set_string_extension(&mut self, name: ExtensionName, value: String) {
        self.extensions.set(name, ExtensionValue::String(value));
    }

    /// The `correlationid` extension.
    pub fn correlation_id(&self) -> Option<&str> {
        self.string_extension(CORRELATION_ID)
    }

    /// Sets the `correlationid` extension.
    pub fn set_correlation_id(&mut self, value: impl Into<String>) {
        self.set_string_extension(ExtensionName::CORRELATION_ID, value.into());
    }

    /// The `causationid` extension.
    pub fn causation_id(&self) -> Option<&str> {
        self.string_extension(CAUSATION_ID)
    }

    /// Sets the `causationid` extension.
    pub fn set_causation_id(&mut self, value: impl Into<String>) {
        self.set_string_extension(ExtensionName::CAUSATION_ID, value.into());
    }

    /// The `traceparent` extension (W3C trace context).
    pub fn traceparent(&self) -> Option<&str> {
        self.string_extension(TRACEPARENT)
    }

    /// Sets the `traceparent` extension.
    pub fn set_traceparent(&mut self, value: impl Into<String>) {
        self.set_string_extension(ExtensionName::TRACEPARENT, value.into());
    }

    /// The `tracestate` extension (W3C trace context).
    pub fn tracestate(&self) -> Option<&str> {
        self.string_extension(TRACESTATE)
    }

    /// Sets the `tracestate` extension.
    pub fn set_tracestate(&mut self, value: impl Into<String>) {
        self.set_string_extension(ExtensionName::TRACESTATE, value.into());
    }

    /// The `partitionkey` extension.
    pub fn partition_key(&self) -> Option<&str> {
        self.string_extension(PARTITION_KEY)
    }

    /// Sets the `partitionkey` extension.
    pub fn set_partition_key(&mut self, value: impl Into<String>) {
        self.set_string_extension(ExtensionName::PARTITION_KEY, value.into());
    }
}
