//! Binary content mode: attributes as `ce-*` headers, data as payload.

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{
    percent, DecodeError, DecodeErrorKind, EncodeError, EncodeErrorKind, PlainValues, SPEC_VERSION,
};
use crate::envelope::{Envelope, ExtensionName, ExtensionValue, Extensions};
use crate::Error;

pub(crate) const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
pub(crate) const CE_ID: HeaderName = HeaderName::from_static("ce-id");
pub(crate) const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
pub(crate) const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
pub(crate) const CE_SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
pub(crate) const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
pub(crate) const CE_DATACONTENTTYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
pub(crate) const CE_DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
pub(crate) const CE_CORRELATIONID: HeaderName = HeaderName::from_static("ce-correlationid");
pub(crate) const CE_CAUSATIONID: HeaderName = HeaderName::from_static("ce-causationid");
pub(crate) const CE_TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");
pub(crate) const CE_TRACESTATE: HeaderName = HeaderName::from_static("ce-tracestate");
pub(crate) const CE_PARTITIONKEY: HeaderName = HeaderName::from_static("ce-partitionkey");

/// The header of extension `name`: a static name for the extensions jetevents
/// sets on almost every event, so they cost no allocation per event.
fn extension_header(name: &str) -> Result<HeaderName, EncodeError> {
    use crate::envelope::{CAUSATION_ID, CORRELATION_ID, PARTITION_KEY, TRACEPARENT, TRACESTATE};
    Ok(match name {
        PARTITION_KEY => CE_PARTITIONKEY,
        TRACEPARENT => CE_TRACEPARENT,
        TRACESTATE => CE_TRACESTATE,
        CORRELATION_ID => CE_CORRELATIONID,
        CAUSATION_ID => CE_CAUSATIONID,
        _ => {
            let mut header = String::with_capacity(3 + name.len());
            header.push_str("ce-");
            header.push_str(name);
            HeaderName::try_from(header).map_err(|err| {
                Error::with_source(EncodeErrorKind::InvalidExtensionName(name.to_owned()), err)
            })?
        }
    })
}

/// The header value of `s`; `plain` when validation found that it needs no
/// percent-encoding, so it is not scanned again.
fn value(s: &str, plain: bool) -> HeaderValue {
    // Percent-encoding leaves no CR or LF, so the conversion cannot panic.
    HeaderValue::from(if plain {
        s.to_owned()
    } else {
        percent::encode(s)
    })
}

/// The header value of the string attribute `name` of an outgoing event,
/// checked as [`encode_into`]'s validation checks it (non-empty when
/// `required`, no control characters) and percent-encoded when needed. The
/// publisher writes a typed event's headers with this, without an envelope.
pub(crate) fn attribute_value(
    name: &str,
    value: &str,
    required: bool,
) -> Result<HeaderValue, EncodeError> {
    let plain = super::check_string(name, value, required)?;
    Ok(self::value(value, plain))
}

/// [`attribute_value`] of an owned value: a value that needs no escaping
/// becomes the header as it is, without a copy.
pub(crate) fn attribute_value_owned(
    name: &str,
    value: String,
    required: bool,
) -> Result<HeaderValue, EncodeError> {
    if (!required || !value.is_empty()) && percent::is_plain(&value) {
        Ok(HeaderValue::from(value))
    } else {
        attribute_value(name, &value, required)
    }
}

/// Adds the envelope's headers; the envelope is already validated, and
/// `plain` says which of its values need no percent-encoding.
pub(super) fn encode_into(
    envelope: &Envelope,
    headers: &mut HeaderMap,
    plain: PlainValues,
) -> Result<Bytes, EncodeError> {
    let value_at = |s: &str, index: usize| value(s, plain.is_plain(index));
    headers.insert(CE_SPECVERSION, SPEC_VERSION);
    headers.insert(CE_ID, value_at(&envelope.id, PlainValues::ID));
    headers.insert(CE_SOURCE, value_at(&envelope.source, PlainValues::SOURCE));
    headers.insert(CE_TYPE, value_at(&envelope.event_type, PlainValues::TYPE));
    if let Some(subject) = &envelope.subject {
        headers.insert(CE_SUBJECT, value_at(subject, PlainValues::SUBJECT));
    }
    if let Some(time) = &envelope.time {
        headers.insert(CE_TIME, HeaderValue::from(super::format_time(time)));
    }
    if let Some(ct) = &envelope.data_content_type {
        headers.insert(
            CE_DATACONTENTTYPE,
            value_at(ct, PlainValues::DATACONTENTTYPE),
        );
    }
    if let Some(schema) = &envelope.data_schema {
        headers.insert(CE_DATASCHEMA, value_at(schema, PlainValues::DATASCHEMA));
    }
    for (index, (name, ext)) in envelope.extensions.iter().enumerate() {
        let header = extension_header(name)?;
        let value = match ext {
            ExtensionValue::String(s) => value_at(s, PlainValues::FIRST_EXTENSION + index),
            ExtensionValue::Boolean(b) => HeaderValue::from(if *b { "true" } else { "false" }),
            ExtensionValue::Integer(i) => HeaderValue::from(*i),
        };
        headers.insert(header, value);
    }
    Ok(envelope.data.clone().unwrap_or_default())
}

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(duplicate(name));
    }
    *slot = Some(value);
    Ok(())
}

fn duplicate(name: &str) -> DecodeError {
    Error::new(DecodeErrorKind::InvalidAttribute {
        name: name.to_owned(),
        reason: "appears more than once".to_owned(),
    })
}

/// What a `ce-` header carries, by its name without the prefix.
enum Attribute {
    SpecVersion,
    Id,
    Source,
    Type,
    Subject,
    Time,
    DataContentType,
    DataSchema,
    Extension(ExtensionName),
}

impl Attribute {
    /// The attribute named `name` exactly (lower case); `None` when it is
    /// not a valid extension name either.
    fn of(name: &str) -> Option<Attribute> {
        Some(match name {
            "specversion" => Attribute::SpecVersion,
            "id" => Attribute::Id,
            "source" => Attribute::Source,
            "type" => Attribute::Type,
            "subject" => Attribute::Subject,
            "time" => Attribute::Time,
            "datacontenttype" => Attribute::DataContentType,
            "dataschema" => Attribute::DataSchema,
            _ => Attribute::Extension(ExtensionName::parse(name)?),
        })
    }
}

/// Decodes a message with headers, detecting its mode as the binding says
/// in the same pass: a `Content-Type` naming a CloudEvents format means
/// structured, else any `ce-` header means binary, else structured.
pub(super) fn decode(headers: &HeaderMap, payload: &Bytes) -> Result<Envelope, DecodeError> {
    match read(headers, payload) {
        Ok(Some(envelope)) => Ok(envelope),
        Ok(None) => super::structured::decode(payload),
        // A `ce-` header before the `Content-Type` may have failed, and
        // structured mode ignores those: the rare case looks again.
        Err(err) => match super::structured_mode(headers) {
            Some(mode) => mode.and_then(|()| super::structured::decode(payload)),
            None => Err(err),
        },
    }
}

/// One pass over the headers: the binary-mode envelope, or `None` for a
/// message the binding reads as structured.
fn read(headers: &HeaderMap, payload: &Bytes) -> Result<Option<Envelope>, DecodeError> {
    let mut has_ce_header = false;
    let mut specversion = None;
    let mut id = None;
    let mut source = None;
    let mut event_type = None;
    let mut subject = None;
    let mut time = None;
    let mut data_content_type = None;
    let mut data_schema = None;
    let mut content_type_header = None;
    let mut extensions = Extensions::new();

    for (name, values) in headers.iter() {
        let header: &str = name.as_ref();
        let Some(attribute) = header
            .get(..3)
            .filter(|prefix| prefix.eq_ignore_ascii_case("ce-"))
            .map(|_| &header[3..])
        else {
            if header.eq_ignore_ascii_case("content-type") {
                let value = values.first().map(|value| value.as_str());
                if let Some(mode) = value.and_then(super::structured_content_type) {
                    return mode.map(|()| None);
                }
                content_type_header = value;
            }
            continue;
        };
        has_ce_header = true;
        let raw = match values.as_slice() {
            [raw] => raw.as_str(),
            [] => continue,
            _ => return Err(duplicate(&attribute.to_ascii_lowercase())),
        };
        let decoded = percent::decode(raw, header)?;
        // Names are case-insensitive; senders almost always write them in
        // lower case, so a name is matched as it is, and lowered only when
        // it matches nothing (no valid name has an upper-case letter).
        let known = match Attribute::of(attribute) {
            Some(known) => known,
            None => {
                let lowered = attribute.to_ascii_lowercase();
                match Attribute::of(&lowered) {
                    Some(known) => known,
                    None => {
                        return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                            name: lowered,
                            reason: "not a valid extension name".to_owned(),
                        }))
                    }
                }
            }
        };
        // Borrowed until kept: the spec version is only compared and the
        // time only parsed.
        match known {
            Attribute::SpecVersion => set_once(&mut specversion, decoded, "specversion")?,
            Attribute::Id => set_once(&mut id, decoded.into_owned(), "id")?,
            Attribute::Source => set_once(&mut source, decoded.into_owned(), "source")?,
            Attribute::Type => set_once(&mut event_type, decoded.into_owned(), "type")?,
            Attribute::Subject => set_once(&mut subject, decoded.into_owned(), "subject")?,
            Attribute::Time => set_once(&mut time, super::parse_time(&decoded)?, "time")?,
            Attribute::DataContentType => set_once(
                &mut data_content_type,
                decoded.into_owned(),
                "datacontenttype",
            )?,
            Attribute::DataSchema => {
                set_once(&mut data_schema, decoded.into_owned(), "dataschema")?
            }
            Attribute::Extension(name) => {
                if extensions
                    .set(name, ExtensionValue::String(decoded.into_owned()))
                    .is_some()
                {
                    return Err(duplicate(&attribute.to_ascii_lowercase()));
                }
            }
        }
    }

    if !has_ce_header {
        return Ok(None);
    }
    // Made only when missing: an error dropped unused costs every event.
    let missing = |name: &'static str| Error::new(DecodeErrorKind::MissingAttribute(name));
    let specversion = specversion.ok_or_else(|| missing("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(Error::new(DecodeErrorKind::UnsupportedSpecVersion(
            specversion.into_owned(),
        )));
    }
    let envelope = Envelope {
        id: id.ok_or_else(|| missing("id"))?,
        source: source.ok_or_else(|| missing("source"))?,
        event_type: event_type.ok_or_else(|| missing("type"))?,
        subject,
        time,
        data_content_type: match data_content_type {
            Some(ct) => Some(ct),
            // Not percent-encoded, so not checked by `percent::decode`.
            None => match content_type_header {
                Some(ct) if super::has_control_chars(ct) => {
                    return Err(super::decode_invalid(
                        "datacontenttype",
                        "contains control characters",
                    ))
                }
                ct => ct.map(str::to_owned),
            },
        },
        data_schema,
        extensions,
        // An empty payload is indistinguishable from absent data on the wire.
        data: (!payload.is_empty()).then(|| payload.clone()),
    };
    // Every value passed `percent::decode`, which refuses control
    // characters: what is left to check is that none is empty.
    super::check_not_empty(&envelope)?;
    Ok(Some(envelope))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Structured mode ignores `ce-` headers: one the binary pass fails on
    /// must not fail a message whose `Content-Type` says structured, in
    /// whichever order the pass meets them (the map's order is random: with
    /// fifteen bad headers, the `Content-Type` is rarely first).
    #[test]
    fn structured_content_type_wins_over_bad_ce_headers() {
        let mut headers = HeaderMap::new();
        for index in 0..15 {
            headers.insert(format!("ce-bad{index}").as_str(), "%C0%A0");
        }
        headers.insert("Content-Type", "application/cloudevents+json");
        let payload =
            Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#);
        let envelope = decode(&headers, &payload).unwrap();
        assert_eq!(envelope.id, "1");
    }
}
