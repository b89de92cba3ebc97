//! Requests and typed responses as binary-mode CloudEvents, written and read
//! without an [`Envelope`](crate::envelope::Envelope).
//!
//! Every call builds one request and one response and reads one response:
//! going through an envelope and the codec cost about 12 µs per call on a
//! quiet machine (a dozen small allocations each way, checks of values made
//! here), a tenth of a call's CPU. So the typed path writes the `ce-*`
//! headers straight from the event's static type and the ids at hand, and
//! reads a response from the two headers that decide it (`ce-specversion`,
//! `ce-type`) and the payload.
//!
//! Only the attributes a call needs travel: the four CloudEvents requires
//! (`specversion`, `id`, `source`, `type`), `dataschema` and `partitionkey`
//! when the type has them, the lineage (`correlationid`, `causationid`) and
//! the trace context. `time` and `datacontenttype` are optional and stay
//! off the wire: each header costs both sides about 2 µs of CPU, and the
//! data of a typed request or response is always JSON, which is also what
//! an absent `datacontenttype` means to the codec.

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::codec::binary::{
    attribute_value, attribute_value_owned, CE_CAUSATIONID, CE_CORRELATIONID, CE_DATACONTENTTYPE,
    CE_DATASCHEMA, CE_ID, CE_PARTITIONKEY, CE_SOURCE, CE_SPECVERSION, CE_TRACEPARENT,
    CE_TRACESTATE, CE_TYPE,
};
use crate::codec::{self, DecodeError, DecodeErrorKind, EncodeError, SPEC_VERSION};
use crate::envelope::content_type::is_json_content_type;
use crate::envelope::{CAUSATION_ID, CORRELATION_ID, PARTITION_KEY, TRACESTATE};
use crate::event::Event;
use crate::trace::TraceHeaders;
use crate::Error;

/// The attributes of one outgoing request or response.
#[derive(Debug)]
pub(crate) struct Attributes<'a> {
    /// Owned: a fresh id becomes its header without a copy.
    pub(crate) id: String,
    pub(crate) source: &'a str,
    pub(crate) event_type: &'static str,
    pub(crate) data_schema: Option<&'static str>,
    pub(crate) partition_key: Option<String>,
    pub(crate) correlation_id: Option<&'a str>,
    pub(crate) causation_id: Option<&'a str>,
    pub(crate) trace: Option<TraceHeaders>,
}

impl Attributes<'_> {
    /// The binary-mode headers, values checked and percent-encoded as the
    /// codec does (a plain value, the usual case, is scanned once).
    pub(crate) fn headers(self) -> Result<HeaderMap, EncodeError> {
        let mut headers = HeaderMap::new();
        headers.insert(CE_SPECVERSION, SPEC_VERSION);
        headers.insert(CE_ID, attribute_value_owned("id", self.id, true)?);
        let required: [(HeaderName, &str, &str); 2] = [
            (CE_SOURCE, "source", self.source),
            (CE_TYPE, "type", self.event_type),
        ];
        for (header, name, value) in required {
            headers.insert(header, attribute_value(name, value, true)?);
        }
        let trace = self.trace.as_ref();
        let optional: [(HeaderName, &str, Option<&str>); 5] = [
            (CE_DATASCHEMA, "dataschema", self.data_schema),
            (
                CE_PARTITIONKEY,
                PARTITION_KEY,
                self.partition_key.as_deref(),
            ),
            (CE_CORRELATIONID, CORRELATION_ID, self.correlation_id),
            (CE_CAUSATIONID, CAUSATION_ID, self.causation_id),
            (
                CE_TRACESTATE,
                TRACESTATE,
                trace.and_then(TraceHeaders::tracestate),
            ),
        ];
        for (header, name, value) in optional {
            if let Some(value) = value {
                // `dataschema`, when present, must not be empty.
                let required = header == CE_DATASCHEMA;
                headers.insert(header, attribute_value(name, value, required)?);
            }
        }
        if let Some(trace) = trace {
            // Written here from hex digits and dashes: nothing to check.
            headers.insert(CE_TRACEPARENT, trace.traceparent());
        }
        Ok(headers)
    }
}

/// The data of a response that should be an `E`.
///
/// A binary-mode message of type `E` whose data is JSON (what every
/// jetevents endpoint sends) is read from its headers and payload alone;
/// anything else (structured mode, header names in another case, another
/// type) goes through the full decode, so it is accepted or refused exactly
/// as [`codec::decode`] and
/// [`Envelope::decode_data`](crate::envelope::Envelope::decode_data) would.
pub(crate) fn read_data<E: Event>(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<E, DecodeError> {
    if headers.is_some_and(is_plain_binary::<E>) {
        // As the codec: no payload is no data, which reads as JSON `null`.
        let data: &[u8] = if payload.is_empty() { b"null" } else { payload };
        return serde_json::from_slice(data)
            .map_err(|err| Error::with_source(DecodeErrorKind::InvalidData, err));
    }
    codec::decode(headers, payload)?.decode_data()
}

/// Whether `headers` say a binary-mode CloudEvent of type `E` with JSON data,
/// with nothing the full decode reads differently: no `Content-Type` (which
/// could make it structured), required attributes present once, and values
/// with nothing to unescape.
fn is_plain_binary<E: Event>(headers: &HeaderMap) -> bool {
    let single = |name: HeaderName| {
        let mut values = headers.get_all(name);
        match (values.next(), values.next()) {
            (Some(value), None) => Some(HeaderValue::as_str(value)),
            _ => None,
        }
    };
    let present = |value: Option<&str>| value.is_some_and(|value| !value.is_empty());
    let no_content_type = headers.iter().all(|(name, _)| {
        let name: &str = name.as_ref();
        !name.eq_ignore_ascii_case("content-type")
    });
    single(CE_SPECVERSION) == Some(SPEC_VERSION)
        && single(CE_TYPE) == Some(E::TYPE)
        && present(single(CE_ID))
        && present(single(CE_SOURCE))
        && headers
            .get(CE_DATACONTENTTYPE)
            .is_none_or(|ct| is_json_content_type(Some(ct.as_str())))
        && no_content_type
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::envelope::Envelope;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Quote {
        cents: u64,
    }

    impl Event for Quote {
        const TYPE: &'static str = "pricing.quote.given.v1";
    }

    fn attributes() -> Attributes<'static> {
        Attributes {
            id: "0190-id".to_owned(),
            source: "/pricing service",
            event_type: Quote::TYPE,
            data_schema: Some("https://example.com/quote.json"),
            partition_key: Some("sku 1".to_owned()),
            correlation_id: Some("flow-1"),
            causation_id: Some("req-1"),
            trace: None,
        }
    }

    #[test]
    fn headers_are_the_codecs_without_time_and_content_type() {
        let headers = attributes().headers().unwrap();
        let decoded = codec::decode(Some(&headers), &Bytes::from_static(b"{\"cents\":5}")).unwrap();
        assert_eq!(decoded.source, "/pricing service");
        assert_eq!(decoded.partition_key(), Some("sku 1"));
        assert_eq!(decoded.time, None);
        assert_eq!(decoded.data_content_type, None);
        // Header for header what the codec writes for the same event.
        let (expected, _) = codec::encode(&decoded, codec::Encoding::Binary).unwrap();
        assert_eq!(expected, headers);
        assert_eq!(decoded.decode_data::<Quote>().unwrap(), Quote { cents: 5 });
    }

    #[test]
    fn headers_refuse_what_the_codec_refuses() {
        let empty_id = Attributes {
            id: String::new(),
            ..attributes()
        };
        assert!(empty_id.headers().is_err());
        let control = Attributes {
            correlation_id: Some("a\nb"),
            ..attributes()
        };
        assert!(control.headers().is_err());
    }

    #[test]
    fn read_data_takes_the_plain_path_and_agrees_with_the_codec() {
        let payload = Bytes::from_static(b"{\"cents\":7}");
        let headers = attributes().headers().unwrap();
        assert_eq!(
            read_data::<Quote>(Some(&headers), &payload).unwrap(),
            Quote { cents: 7 }
        );
        // Another type, a missing id, a structured message: refused or read
        // exactly as the codec does.
        let mut other = Envelope::new("/pricing", "pricing.quote.refused.v1");
        other.data = Some(payload.clone());
        let (other_headers, _) = codec::encode(&other, codec::Encoding::Binary).unwrap();
        let err = read_data::<Quote>(Some(&other_headers), &payload).unwrap_err();
        assert!(matches!(err.kind(), DecodeErrorKind::TypeMismatch { .. }));
        let mut no_id = headers.clone();
        no_id.insert(CE_ID, "");
        assert!(read_data::<Quote>(Some(&no_id), &payload).is_err());
        let mut quote = Envelope::new("/pricing", Quote::TYPE);
        quote.data = Some(payload.clone());
        let (structured_headers, structured) =
            codec::encode(&quote, codec::Encoding::Structured).unwrap();
        assert_eq!(
            read_data::<Quote>(Some(&structured_headers), &structured).unwrap(),
            Quote { cents: 7 }
        );
        let mut not_json = headers.clone();
        not_json.insert(CE_DATACONTENTTYPE, "text/plain");
        let err = read_data::<Quote>(Some(&not_json), &payload).unwrap_err();
        assert!(matches!(
            err.kind(),
            DecodeErrorKind::UnsupportedContentType(_)
        ));
    }
}
