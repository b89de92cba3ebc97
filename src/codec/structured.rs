//! Structured content mode: the CloudEvents JSON event format as payload.

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{base64, DecodeError, DecodeErrorKind, SPEC_VERSION};
use crate::envelope::{Envelope, ExtensionName, ExtensionValue, Extensions};
use crate::Error;

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b',');
    push_json_str(out, name);
    out.push(b':');
    push_json_str(out, value);
}

/// Writes the JSON format; the envelope is already validated.
pub(super) fn encode(envelope: &Envelope) -> Bytes {
    let data_len = envelope.data.as_ref().map_or(0, |d| d.len() * 4 / 3 + 16);
    let mut out = Vec::with_capacity(160 + data_len);
    out.extend_from_slice(b"{\"specversion\":\"1.0\"");
    push_field(&mut out, "id", &envelope.id);
    push_field(&mut out, "source", &envelope.source);
    push_field(&mut out, "type", &envelope.event_type);
    if let Some(subject) = &envelope.subject {
        push_field(&mut out, "subject", subject);
    }
    if let Some(time) = &envelope.time {
        push_field(&mut out, "time", &super::format_time(time));
    }
    if let Some(ct) = &envelope.data_content_type {
        push_field(&mut out, "datacontenttype", ct);
    }
    if let Some(schema) = &envelope.data_schema {
        push_field(&mut out, "dataschema", schema);
    }
    for (name, value) in &envelope.extensions {
        out.push(b',');
        push_json_str(&mut out, name);
        out.push(b':');
        match value {
            ExtensionValue::String(s) => push_json_str(&mut out, s),
            ExtensionValue::Boolean(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" })
            }
            ExtensionValue::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        }
    }
    if let Some(data) = &envelope.data {
        let ct = envelope.data_content_type.as_deref();
        // Whitespace around the JSON text would be lost in the embedding, so
        // such data goes as data_base64 to keep its bytes exact.
        if super::is_json_content_type(ct)
            && !data.first().is_some_and(u8::is_ascii_whitespace)
            && !data.last().is_some_and(u8::is_ascii_whitespace)
            && serde_json::from_slice::<IgnoredAny>(data).is_ok()
        {
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(data);
        } else if let (Some(true), Ok(text)) = (
            ct.map(|ct| super::starts_with_ignore_case(super::media_type(ct), "text/")),
            std::str::from_utf8(data),
        ) {
            push_field(&mut out, "data", text);
        } else {
            out.extend_from_slice(b",\"data_base64\":\"");
            base64::encode_into(data, &mut out);
            out.push(b'"');
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A JSON string, borrowed from the payload when it has no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

fn invalid_json(err: serde_json::Error) -> DecodeError {
    Error::with_source(DecodeErrorKind::InvalidJson, err)
}

fn eof() -> DecodeError {
    Error::new(DecodeErrorKind::InvalidJson)
}

fn skip_ws(buf: &[u8], mut pos: usize) -> usize {
    while matches!(buf.get(pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        pos += 1;
    }
    pos
}

/// The payload as the parser reads it: checked as UTF-8 once, as a whole,
/// when it is, so serde_json does not check every string again (almost
/// every payload); raw bytes otherwise, where serde_json reports the first
/// bad byte in its place, after whatever error comes before it.
#[derive(Clone, Copy)]
enum Input<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

impl<'a> Input<'a> {
    fn of(payload: &'a [u8]) -> Input<'a> {
        match std::str::from_utf8(payload) {
            Ok(text) => Input::Text(text),
            Err(_) => Input::Bytes(payload),
        }
    }

    fn bytes(self) -> &'a [u8] {
        match self {
            Input::Text(text) => text.as_bytes(),
            Input::Bytes(bytes) => bytes,
        }
    }
}

/// Reads one JSON value of type `T` at `pos`; returns it and the end offset.
fn read_value<'de, T: Deserialize<'de>>(
    input: Input<'de>,
    pos: usize,
    name: &str,
) -> Result<(T, usize), DecodeError> {
    let (next, offset) = match input {
        // `pos` is always just after ASCII JSON punctuation or whitespace,
        // so on a character boundary.
        Input::Text(text) => {
            let mut stream = serde_json::Deserializer::from_str(text.get(pos..).ok_or_else(eof)?)
                .into_iter::<T>();
            (stream.next(), stream.byte_offset())
        }
        Input::Bytes(bytes) => {
            let mut stream = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<T>();
            (stream.next(), stream.byte_offset())
        }
    };
    match next {
        Some(Ok(value)) => Ok((value, pos + offset)),
        Some(Err(err)) if err.is_data() => Err(Error::with_source(
            DecodeErrorKind::InvalidAttribute {
                name: name.to_owned(),
                reason: "wrong JSON type".to_owned(),
            },
            err,
        )),
        Some(Err(err)) => Err(invalid_json(err)),
        None => Err(eof()),
    }
}

#[derive(Default)]
struct Fields<'a> {
    specversion: Option<Cow<'a, str>>,
    id: Option<Cow<'a, str>>,
    source: Option<Cow<'a, str>>,
    event_type: Option<Cow<'a, str>>,
    subject: Option<Cow<'a, str>>,
    time: Option<Cow<'a, str>>,
    data_content_type: Option<Cow<'a, str>>,
    data_schema: Option<Cow<'a, str>>,
    data: Option<Range<usize>>,
    data_base64: Option<Cow<'a, str>>,
    extensions: Extensions,
}

fn duplicate(name: &str) -> DecodeError {
    Error::new(DecodeErrorKind::InvalidAttribute {
        name: name.to_owned(),
        reason: "appears more than once".to_owned(),
    })
}

fn read_str<'a>(
    input: Input<'a>,
    pos: usize,
    name: &str,
    slot: &mut Option<Cow<'a, str>>,
) -> Result<usize, DecodeError> {
    if slot.is_some() {
        return Err(duplicate(name));
    }
    // JSON null for an attribute means absent.
    let (value, end) = read_value::<Option<Str<'a>>>(input, pos, name)?;
    *slot = value.map(|s| s.0);
    Ok(end)
}

pub(super) fn decode(payload: &Bytes) -> Result<Envelope, DecodeError> {
    let input = Input::of(payload);
    let buf = input.bytes();
    let mut fields = Fields::default();
    let mut pos = skip_ws(buf, 0);
    if buf.get(pos) != Some(&b'{') {
        return Err(eof());
    }
    pos = skip_ws(buf, pos + 1);
    if buf.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        loop {
            let (Str(name), end) = read_value::<Str<'_>>(input, pos, "")?;
            pos = skip_ws(buf, end);
            if buf.get(pos) != Some(&b':') {
                return Err(eof());
            }
            pos = skip_ws(buf, pos + 1);
            pos = match name.as_ref() {
                "specversion" => read_str(input, pos, "specversion", &mut fields.specversion)?,
                "id" => read_str(input, pos, "id", &mut fields.id)?,
                "source" => read_str(input, pos, "source", &mut fields.source)?,
                "type" => read_str(input, pos, "type", &mut fields.event_type)?,
                "subject" => read_str(input, pos, "subject", &mut fields.subject)?,
                "time" => read_str(input, pos, "time", &mut fields.time)?,
                "datacontenttype" => {
                    read_str(input, pos, "datacontenttype", &mut fields.data_content_type)?
                }
                "dataschema" => read_str(input, pos, "dataschema", &mut fields.data_schema)?,
                "data_base64" => read_str(input, pos, "data_base64", &mut fields.data_base64)?,
                "data" => {
                    if fields.data.is_some() {
                        return Err(duplicate("data"));
                    }
                    let (IgnoredAny, end) = read_value::<IgnoredAny>(input, pos, "data")?;
                    fields.data = Some(pos..end);
                    end
                }
                other => {
                    let Some(name) = ExtensionName::parse(other) else {
                        return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                            name: other.to_owned(),
                            reason: "not a valid extension name".to_owned(),
                        }));
                    };
                    let (value, end) = read_value::<serde_json::Value>(input, pos, other)?;
                    let value = match value {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(ExtensionValue::String(s)),
                        serde_json::Value::Bool(b) => Some(ExtensionValue::Boolean(b)),
                        serde_json::Value::Number(n) => match n.as_i64() {
                            Some(i) => Some(ExtensionValue::Integer(i)),
                            None => {
                                return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                                    name: other.to_owned(),
                                    reason: "not an integer".to_owned(),
                                }))
                            }
                        },
                        _ => {
                            return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                                name: other.to_owned(),
                                reason: "extension values are strings, booleans or integers"
                                    .to_owned(),
                            }))
                        }
                    };
                    if let Some(value) = value {
                        if fields.extensions.set(name, value).is_some() {
                            return Err(duplicate(other));
                        }
                    }
                    end
                }
            };
            pos = skip_ws(buf, pos);
            match buf.get(pos) {
                Some(b',') => pos = skip_ws(buf, pos + 1),
                Some(b'}') => {
                    pos += 1;
                    break;
                }
                _ => return Err(eof()),
            }
        }
    }
    if skip_ws(buf, pos) != buf.len() {
        return Err(eof());
    }
    into_envelope(fields, payload)
}

fn into_envelope(fields: Fields<'_>, payload: &Bytes) -> Result<Envelope, DecodeError> {
    let missing = |name| Error::new(DecodeErrorKind::MissingAttribute(name));
    let specversion = fields.specversion.ok_or_else(|| missing("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(Error::new(DecodeErrorKind::UnsupportedSpecVersion(
            specversion.into_owned(),
        )));
    }
    let time = fields.time.as_deref().map(super::parse_time).transpose()?;
    let data_content_type = fields.data_content_type.map(Cow::into_owned);
    let data = match (fields.data, fields.data_base64) {
        (Some(_), Some(_)) => {
            return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                name: "data".to_owned(),
                reason: "both data and data_base64 are present".to_owned(),
            }))
        }
        (None, Some(encoded)) => Some(Bytes::from(base64::decode(&encoded).ok_or_else(|| {
            Error::new(DecodeErrorKind::InvalidAttribute {
                name: "data_base64".to_owned(),
                reason: "not base64".to_owned(),
            })
        })?)),
        (Some(span), None) => {
            let raw = &payload[span.clone()];
            if !super::is_json_content_type(data_content_type.as_deref())
                && raw.first() == Some(&b'"')
            {
                // Non-JSON data given as a JSON string: its text is the data.
                let Str(text) = serde_json::from_slice::<Str<'_>>(raw).map_err(invalid_json)?;
                Some(Bytes::copy_from_slice(text.as_bytes()))
            } else {
                Some(payload.slice(span))
            }
        }
        (None, None) => None,
    };
    let envelope = Envelope {
        id: fields.id.ok_or_else(|| missing("id"))?.into_owned(),
        source: fields.source.ok_or_else(|| missing("source"))?.into_owned(),
        event_type: fields
            .event_type
            .ok_or_else(|| missing("type"))?
            .into_owned(),
        subject: fields.subject.map(Cow::into_owned),
        time,
        data_content_type,
        data_schema: fields.data_schema.map(Cow::into_owned),
        extensions: fields.extensions,
        data,
    };
    super::check_decoded(&envelope)?;
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kind(payload: &[u8]) -> DecodeErrorKind {
        decode(&Bytes::copy_from_slice(payload))
            .unwrap_err()
            .kind()
            .clone()
    }

    /// A payload that is not UTF-8 is read byte by byte, as before the
    /// whole-payload check: the bad byte is invalid JSON where it is met,
    /// and an error met before it keeps its own kind.
    #[test]
    fn payloads_that_are_not_utf8_fail_where_the_bad_byte_is() {
        let bad_string =
            b"{\"specversion\":\"1.0\",\"id\":\"1\xff\",\"source\":\"/s\",\"type\":\"t\"}";
        assert!(matches!(kind(bad_string), DecodeErrorKind::InvalidJson));
        let duplicate_first =
            b"{\"specversion\":\"1.0\",\"id\":\"1\",\"id\":\"2\",\"source\":\"/s\xff\",\"type\":\"t\"}";
        assert!(matches!(
            kind(duplicate_first),
            DecodeErrorKind::InvalidAttribute { name, reason }
                if name == "id" && reason == "appears more than once"
        ));
        let wrong_type_first =
            b"{\"specversion\":\"1.0\",\"id\":1,\"source\":\"/s\xff\",\"type\":\"t\"}";
        assert!(matches!(
            kind(wrong_type_first),
            DecodeErrorKind::InvalidAttribute { name, .. } if name == "id"
        ));
    }

    /// Non-ASCII text, escaped or raw, decodes the same either way.
    #[test]
    fn utf8_payloads_decode_their_strings() {
        let payload = "{\"specversion\":\"1.0\",\"id\":\"caf\u{e9}\",\"source\":\"/s\\u00e9\",\"type\":\"t\",\"comment\":\"\u{1F600}\"}";
        let envelope = decode(&Bytes::from(payload)).unwrap();
        assert_eq!(envelope.id, "caf\u{e9}");
        assert_eq!(envelope.source, "/s\u{e9}");
        assert_eq!(
            envelope.extensions.get("comment"),
            Some(&ExtensionValue::String("\u{1F600}".to_owned()))
        );
    }
}
