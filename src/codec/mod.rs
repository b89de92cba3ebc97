//! The CloudEvents NATS protocol binding (1.0.3-wip), binary and structured.
//!
//! - **Binary** (the default): every attribute is a `ce-<name>` header,
//!   `ce-datacontenttype` included, and the payload is the data bytes.
//!   Header values are percent-encoded (space, `"`, `%` and everything
//!   outside `U+0021..=U+007E`, upper-case hex).
//! - **Structured**: a `Content-Type: application/cloudevents+json` header
//!   and the CloudEvents JSON format as payload; JSON data is embedded as
//!   `data`, text as a `data` string, anything else as `data_base64`.
//!
//! Encoding is strict: required attributes must be non-empty, string values
//! must not contain control characters, extension names must be lower-case
//! ASCII letters and digits. Decoding is lenient where the binding allows it
//! (header names in any case, double-quoted values, lower-case hex, raw
//! values as other SDKs send them: UTF-8, quotes and a `%` that starts no
//! `%XX` escape kept literally, a valid escape always winning; an unprefixed
//! `Content-Type` standing in for `ce-datacontenttype`) and strict where it
//! must be (invalid or overlong UTF-8, missing attributes, unknown spec
//! versions), with one [`DecodeErrorKind`] per cause.
//!
//! The mode of an incoming message is detected as the binding says: a
//! `Content-Type` starting with `application/cloudevents` means structured;
//! otherwise any `ce-` header means binary; a message with neither (or no
//! headers at all, as from NATS servers before 2.2 and SDKs that only know
//! structured mode) is read as structured.
//!
//! ```
//! use jetevents::codec::{self, Encoding};
//! use jetevents::envelope::Envelope;
//!
//! let mut envelope = Envelope::new("/iam", "iam.user.created.v1");
//! envelope.subject = Some("users/ana lima".into());
//! let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
//! assert_eq!(headers.get("ce-subject").unwrap().as_str(), "users/ana%20lima");
//! let decoded = codec::decode(Some(&headers), &payload).unwrap();
//! assert_eq!(decoded, envelope);
//! ```

pub(crate) mod base64;
pub(crate) mod binary;
mod percent;
mod sdk;
mod structured;

use bytes::Bytes;

pub use crate::envelope::content_type::APPLICATION_JSON;
use crate::envelope::content_type::{is_json_content_type, media_type, starts_with_ignore_case};
pub use crate::envelope::error::{DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind};
use crate::envelope::{Envelope, ExtensionValue};
use crate::nats::HeaderMap;
use crate::Error;

/// The media type of the structured mode's JSON event format.
pub const APPLICATION_CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
/// The only CloudEvents spec version this codec reads and writes.
pub const SPEC_VERSION: &str = "1.0";

const CONTENT_TYPE: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static("Content-Type");

/// How an envelope is laid out in a NATS message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// Attributes as `ce-*` headers, data as payload.
    #[default]
    Binary,
    /// The CloudEvents JSON format as payload.
    Structured,
}

/// Encodes `envelope` into fresh headers and a payload.
///
/// ```
/// # use jetevents::{codec::{self, Encoding}, envelope::Envelope};
/// let envelope = Envelope::new("/iam", "iam.user.created.v1");
/// let (headers, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
/// assert_eq!(
///     headers.get("Content-Type").unwrap().as_str(),
///     "application/cloudevents+json"
/// );
/// assert!(payload.starts_with(b"{\"specversion\":\"1.0\""));
/// ```
pub fn encode(envelope: &Envelope, encoding: Encoding) -> Result<(HeaderMap, Bytes), EncodeError> {
    let mut headers = HeaderMap::new();
    let payload = encode_into(envelope, encoding, &mut headers)?;
    Ok((headers, payload))
}

/// Encodes `envelope`, adding its headers to `headers` (which may already
/// hold `Nats-Msg-Id` and the like), and returns the payload.
///
/// Headers of the same name are replaced. `headers` should not hold `ce-*`
/// headers of another event: ones this envelope does not set would stay.
/// On error, `headers` may hold some of the envelope's headers.
///
/// ```
/// # use jetevents::{codec::{self, Encoding}, envelope::Envelope};
/// let envelope = Envelope::new("/iam", "iam.user.created.v1");
/// let mut headers = jetevents::nats::HeaderMap::new();
/// headers.insert("Nats-Msg-Id", envelope.id.as_str());
/// let payload = codec::encode_into(&envelope, Encoding::Binary, &mut headers).unwrap();
/// assert_eq!(headers.get("ce-id").unwrap().as_str(), envelope.id);
/// assert!(payload.is_empty());
/// ```
pub fn encode_into(
    envelope: &Envelope,
    encoding: Encoding,
    headers: &mut HeaderMap,
) -> Result<Bytes, EncodeError> {
    let plain = validate_for_encode(envelope)?;
    match encoding {
        Encoding::Binary => binary::encode_into(envelope, headers, plain),
        Encoding::Structured => {
            headers.insert(CONTENT_TYPE, APPLICATION_CLOUDEVENTS_JSON);
            Ok(structured::encode(envelope))
        }
    }
}

/// Decodes a received message into an envelope, detecting the mode as the
/// binding says (see the [module docs](self)).
///
/// ```
/// # use jetevents::codec;
/// let mut headers = jetevents::nats::HeaderMap::new();
/// headers.insert("CE-SpecVersion", "1.0");
/// headers.insert("ce-id", "1234-1234-1234");
/// headers.insert("ce-source", "/mycontext/subcontext");
/// headers.insert("ce-type", "com.example.someevent");
/// headers.insert("ce-comment", "caf%c3%a9");
/// headers.insert("Content-Type", "application/json");
/// let envelope = codec::decode(Some(&headers), &bytes::Bytes::from_static(b"{}")).unwrap();
/// assert_eq!(envelope.data_content_type.as_deref(), Some("application/json"));
/// assert_eq!(envelope.extension("comment").unwrap().to_string(), "café");
/// ```
pub fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Envelope, DecodeError> {
    match headers {
        // Binary decoding detects the mode in the same pass over the headers.
        Some(headers) => binary::decode(headers, payload),
        None => structured::decode(payload),
    }
}

/// What a `Content-Type` value says of the mode: `Some(Ok(()))` for the
/// structured JSON format, `Some(Err(_))` for a CloudEvents format this codec
/// does not read, `None` for anything else (not a structured event).
fn structured_content_type(value: &str) -> Option<Result<(), DecodeError>> {
    let media_type = media_type(value);
    if !starts_with_ignore_case(media_type, "application/cloudevents") {
        return None;
    }
    if media_type.eq_ignore_ascii_case(APPLICATION_CLOUDEVENTS_JSON)
        || media_type.eq_ignore_ascii_case("application/cloudevents")
    {
        return Some(Ok(()));
    }
    Some(Err(Error::new(DecodeErrorKind::UnsupportedContentType(
        value.to_owned(),
    ))))
}

/// [`structured_content_type`] of the first `Content-Type` header that names
/// a CloudEvents format.
fn structured_mode(headers: &HeaderMap) -> Option<Result<(), DecodeError>> {
    headers.iter().find_map(|(name, values)| {
        let name: &str = name.as_ref();
        if !name.eq_ignore_ascii_case("content-type") {
            return None;
        }
        structured_content_type(values.first()?.as_str())
    })
}

/// Bytes the server counts against `max_payload` for a message with these
/// headers and a payload of `payload_len` bytes: the header block
/// (`NATS/1.0\r\n`, each `Name: value\r\n`, a final `\r\n`) plus the payload.
/// Empty headers are not sent at all, so they count zero.
///
/// ```
/// let mut headers = jetevents::nats::HeaderMap::new();
/// assert_eq!(jetevents::codec::wire_size(&headers, 5), 5);
/// headers.insert("ce-id", "1");
/// assert_eq!(jetevents::codec::wire_size(&headers, 5), 10 + 10 + 2 + 5);
/// ```
pub fn wire_size(headers: &HeaderMap, payload_len: usize) -> usize {
    if headers.is_empty() {
        return payload_len;
    }
    let mut len = b"NATS/1.0\r\n".len() + b"\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + b": ".len() + value.as_str().len() + b"\r\n".len();
        }
    }
    len + payload_len
}

/// Whether `s` has a character CloudEvents forbids in string values
/// (U+0000..U+001F, U+007F..U+009F).
pub(crate) fn has_control_chars(s: &str) -> bool {
    // Every value of every event passes here: one branch-free pass over the
    // bytes (it vectorizes), and characters are decoded only for non-ASCII
    // text, where the C1 controls live.
    let (ascii_control, non_ascii) = s.bytes().fold((false, false), |(control, high), b| {
        (control | (b < 0x20) | (b == 0x7f), high | (b >= 0x80))
    });
    ascii_control || (non_ascii && s.chars().any(char::is_control))
}

fn invalid_attribute(name: &str, reason: &str) -> EncodeError {
    Error::new(EncodeErrorKind::InvalidAttribute {
        name: name.to_owned(),
        reason: reason.to_owned(),
    })
}

/// Which string values of an envelope need no percent-encoding, learnt while
/// validating them so the binary encoder does not scan them again. Bit `i`
/// stands for the value [`PlainValues::ID`].. [`PlainValues::DATASCHEMA`], then
/// the string extensions in name order from [`PlainValues::FIRST_EXTENSION`];
/// values past the last bit count as not plain (encoded the careful way).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PlainValues(u64);

impl PlainValues {
    pub(crate) const ID: usize = 0;
    pub(crate) const SOURCE: usize = 1;
    pub(crate) const TYPE: usize = 2;
    pub(crate) const SUBJECT: usize = 3;
    pub(crate) const DATACONTENTTYPE: usize = 4;
    pub(crate) const DATASCHEMA: usize = 5;
    pub(crate) const FIRST_EXTENSION: usize = 6;

    fn set(&mut self, index: usize, plain: bool) {
        if plain && index < 64 {
            self.0 |= 1 << index;
        }
    }

    /// Whether value `index` is known to need no percent-encoding.
    pub(crate) fn is_plain(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }
}

/// Checks one string value; `Ok(true)` when it needs no percent-encoding.
fn check_string(name: &str, value: &str, required_non_empty: bool) -> Result<bool, EncodeError> {
    if required_non_empty && value.is_empty() {
        return Err(invalid_attribute(name, "must not be empty"));
    }
    // Printable ASCII has no control characters: the usual case, one scan.
    if percent::is_plain(value) {
        return Ok(true);
    }
    if has_control_chars(value) {
        return Err(invalid_attribute(name, "contains control characters"));
    }
    Ok(false)
}

fn validate_for_encode(envelope: &Envelope) -> Result<PlainValues, EncodeError> {
    let mut plain = PlainValues::default();
    plain.set(PlainValues::ID, check_string("id", &envelope.id, true)?);
    plain.set(
        PlainValues::SOURCE,
        check_string("source", &envelope.source, true)?,
    );
    plain.set(
        PlainValues::TYPE,
        check_string("type", &envelope.event_type, true)?,
    );
    for (index, name, value) in [
        (PlainValues::SUBJECT, "subject", &envelope.subject),
        (
            PlainValues::DATACONTENTTYPE,
            "datacontenttype",
            &envelope.data_content_type,
        ),
        (PlainValues::DATASCHEMA, "dataschema", &envelope.data_schema),
    ] {
        if let Some(value) = value {
            plain.set(index, check_string(name, value, true)?);
        }
    }
    if let Some(time) = &envelope.time {
        use chrono::Datelike;
        if !(0..=9999).contains(&time.year()) {
            return Err(invalid_attribute("time", "year outside 0..=9999"));
        }
    }
    // Extension names were checked when they were set.
    for (index, (name, value)) in envelope.extensions.iter().enumerate() {
        if let ExtensionValue::String(value) = value {
            plain.set(
                PlainValues::FIRST_EXTENSION + index,
                check_string(name, value, false)?,
            );
        }
    }
    Ok(plain)
}

fn decode_invalid(name: &str, reason: impl Into<String>) -> DecodeError {
    Error::new(DecodeErrorKind::InvalidAttribute {
        name: name.to_owned(),
        reason: reason.into(),
    })
}

/// Checks a decoded envelope against the rules [`encode`] enforces, so that
/// whatever decodes also encodes.
pub(crate) fn check_decoded(envelope: &Envelope) -> Result<(), DecodeError> {
    check_not_empty(envelope)?;
    for (name, value) in string_attributes(envelope) {
        if value.is_some_and(|value| has_control_chars(value)) {
            return Err(decode_invalid(name, "contains control characters"));
        }
    }
    for (name, value) in &envelope.extensions {
        if let ExtensionValue::String(value) = value {
            if has_control_chars(value) {
                return Err(decode_invalid(name, "contains control characters"));
            }
        }
    }
    Ok(())
}

/// The string attributes of an envelope by name, `None` when absent.
fn string_attributes(envelope: &Envelope) -> [(&'static str, Option<&String>); 6] {
    [
        ("id", Some(&envelope.id)),
        ("source", Some(&envelope.source)),
        ("type", Some(&envelope.event_type)),
        ("subject", envelope.subject.as_ref()),
        ("datacontenttype", envelope.data_content_type.as_ref()),
        ("dataschema", envelope.data_schema.as_ref()),
    ]
}

/// The part of [`check_decoded`] that is not about control characters:
/// attributes present are not empty.
pub(crate) fn check_not_empty(envelope: &Envelope) -> Result<(), DecodeError> {
    for (name, value) in string_attributes(envelope) {
        if value.is_some_and(|value| value.is_empty()) {
            return Err(decode_invalid(name, "must not be empty"));
        }
    }
    Ok(())
}

/// The time of `value` when it has the form [`format_time`] writes
/// (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`, up to nine fractional digits), read
/// digit by digit: chrono's RFC 3339 parser is general, and every event's
/// time goes through here. `None` for anything else (offsets, leap
/// seconds, lower-case separators, invalid dates), which chrono reads.
fn parse_utc_time(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let bytes = value.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        bytes.get(range)?.iter().try_fold(0u32, |sum, &b| {
            b.is_ascii_digit().then(|| sum * 10 + u32::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20 || separators.iter().any(|&(at, b)| bytes[at] != b) {
        return None;
    }
    let nanos = match &bytes[19..] {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            let digits = number(20..19 + fraction.len() + 1)?;
            digits * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let year = i32::try_from(number(0..4)?).ok()?;
    let date = chrono::NaiveDate::from_ymd_opt(year, number(5..7)?, number(8..10)?)?;
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    // A leap second (60) is chrono's to read.
    if second > 59 {
        return None;
    }
    Some(
        date.and_hms_nano_opt(hour, minute, second, nanos)?
            .and_utc(),
    )
}

/// Formats a time the way both modes write it: RFC 3339, UTC `Z`, as many
/// fractional digits as needed (so no precision is lost).
///
/// Written digit by digit rather than through chrono's `fmt`-based
/// formatter, as it is on every event's path. Years outside four digits and
/// leap seconds, which chrono writes its own way, go through chrono.
pub(crate) fn format_time(time: &chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let (year, nanos) = (time.year(), time.nanosecond());
    let (Ok(year @ 0..=9999), 0..=999_999_999) = (u32::try_from(year), nanos) else {
        return time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    };
    let mut out = [0u8; 30];
    let mut len = 0;
    let mut digits = |value: u32, width: u32, separator: Option<u8>| {
        for place in (0..width).rev() {
            // A digit is below 10: the cast cannot truncate.
            out[len] = b'0' + (value / 10u32.pow(place) % 10) as u8;
            len += 1;
        }
        if let Some(separator) = separator {
            out[len] = separator;
            len += 1;
        }
    };
    digits(year, 4, Some(b'-'));
    digits(time.month(), 2, Some(b'-'));
    digits(time.day(), 2, Some(b'T'));
    digits(time.hour(), 2, Some(b':'));
    digits(time.minute(), 2, Some(b':'));
    // As chrono's `AutoSi`: the fewest of 0, 3, 6 or 9 digits that are exact.
    match nanos {
        0 => digits(time.second(), 2, Some(b'Z')),
        _ if nanos % 1_000_000 == 0 => {
            digits(time.second(), 2, Some(b'.'));
            digits(nanos / 1_000_000, 3, Some(b'Z'));
        }
        _ if nanos % 1_000 == 0 => {
            digits(time.second(), 2, Some(b'.'));
            digits(nanos / 1_000, 6, Some(b'Z'));
        }
        _ => {
            digits(time.second(), 2, Some(b'.'));
            digits(nanos, 9, Some(b'Z'));
        }
    }
    out[..len].iter().map(|&b| char::from(b)).collect()
}

fn parse_time(value: &str) -> Result<chrono::DateTime<chrono::Utc>, DecodeError> {
    if let Some(time) = parse_utc_time(value) {
        return Ok(time);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|time| time.with_timezone(&chrono::Utc))
        .map_err(|err| {
            Error::with_source(
                DecodeErrorKind::InvalidAttribute {
                    name: "time".to_owned(),
                    reason: "not an RFC 3339 timestamp".to_owned(),
                },
                err,
            )
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    fn chrono_formatted(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        for text in [
            "2026-12-01T22:38:37Z",
            "2026-12-01T22:38:37.5Z",
            "2026-12-01T22:38:37.000123Z",
            "2026-12-01T22:38:37.000000001Z",
            "0001-01-01T00:00:00.120Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.5Z",
            "+10000-01-01T00:00:00Z",
        ] {
            let time = DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| text.parse::<DateTime<Utc>>())
                .unwrap();
            assert_eq!(super::format_time(&time), chrono_formatted(&time), "{text}");
        }
    }

    fn chrono_parsed(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The digit-by-digit reader reads what it accepts as chrono does, and
    /// leaves the rest to chrono.
    #[test]
    fn times_are_read_as_chrono_reads_them() {
        for text in [
            "2026-12-01T22:38:37Z",
            "2026-12-01T22:38:37.5Z",
            "2026-12-01T22:38:37.000123Z",
            "2026-12-01T22:38:37.123456789Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(super::parse_utc_time(text), chrono_parsed(text), "{text}");
            assert!(super::parse_utc_time(text).is_some(), "{text}");
        }
        for text in [
            "2016-12-31T23:59:60.5Z",
            "2026-12-01T22:38:37+01:00",
            "2026-12-01t22:38:37z",
            "2026-12-01 22:38:37Z",
            "2026-12-01T22:38:37.1234567891Z",
            "2026-12-01T22:38:37.Z",
            "2026-02-30T22:38:37Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T22:38Z",
            "+2026-12-01T22:38:37Z",
            "2026-1a-01T22:38:37Z",
        ] {
            assert_eq!(super::parse_utc_time(text), None, "{text}");
            assert_eq!(super::parse_time(text).ok(), chrono_parsed(text), "{text}");
        }
    }

    proptest! {
        #[test]
        fn any_time_is_written_as_chrono_writes_it(
            secs in -70_000_000_000i64..300_000_000_000,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1000), 0u32..2_000_000_000],
        ) {
            let time = DateTime::<Utc>::from_timestamp(secs, nanos);
            if let Some(time) = time {
                prop_assert_eq!(super::format_time(&time), chrono_formatted(&time));
            }
        }

        #[test]
        fn any_written_time_is_read_as_chrono_reads_it(
            secs in -62_167_219_200i64..253_402_300_800,
            nanos in prop_oneof![Just(0u32), (0u32..1000).prop_map(|n| n * 1_000_000),
                (0u32..1_000_000).prop_map(|n| n * 1000), 0u32..1_000_000_000],
        ) {
            if let Some(time) = DateTime::<Utc>::from_timestamp(secs, nanos) {
                let text = super::format_time(&time);
                prop_assert_eq!(super::parse_utc_time(&text), Some(time));
                prop_assert_eq!(chrono_parsed(&text), Some(time));
            }
        }

        #[test]
        fn any_text_is_read_as_chrono_reads_it(text in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?[Zz+]") {
            if let Some(time) = super::parse_utc_time(&text) {
                prop_assert_eq!(Some(time), chrono_parsed(&text));
            }
        }
    }
}
