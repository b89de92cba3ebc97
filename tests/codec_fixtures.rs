//! Hand-written messages from the binding and JSON format texts, and one
//! test per decode (and encode) error kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use jetevents::codec::{self, DecodeErrorKind, EncodeErrorKind, Encoding};
use jetevents::envelope::{Envelope, ExtensionValue};
use jetevents::event::Event;
use serde::{Deserialize, Serialize};

mod foreign_sdk;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, *value);
    }
    map
}

const BASE: [(&str, &str); 4] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "1234-1234-1234"),
    ("ce-source", "/mycontext/subcontext"),
    ("ce-type", "com.example.someevent"),
];

fn base_with(extra: &[(&str, &str)]) -> HeaderMap {
    let mut pairs: Vec<(&str, &str)> = BASE.to_vec();
    pairs.extend_from_slice(extra);
    headers(&pairs)
}

fn decode_err(headers: &HeaderMap, payload: &[u8]) -> DecodeErrorKind {
    codec::decode(Some(headers), &Bytes::copy_from_slice(payload))
        .unwrap_err()
        .into_kind()
}

fn structured_err(payload: &str) -> DecodeErrorKind {
    codec::decode(None, &Bytes::copy_from_slice(payload.as_bytes()))
        .unwrap_err()
        .into_kind()
}

#[test]
fn binding_binary_example() {
    let headers = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-type", "com.example.someevent"),
        ("ce-time", "2018-04-05T03:56:24Z"),
        ("ce-id", "1234-1234-1234"),
        ("ce-source", "/mycontext/subcontext"),
        ("ce-datacontenttype", "application/json"),
    ]);
    let payload = Bytes::from_static(br#"{"hello":"world"}"#);
    let envelope = codec::decode(Some(&headers), &payload).unwrap();
    let mut expected = Envelope::new("/mycontext/subcontext", "com.example.someevent");
    expected.id = "1234-1234-1234".into();
    expected.time = Some(Utc.with_ymd_and_hms(2018, 4, 5, 3, 56, 24).unwrap());
    expected.data_content_type = Some("application/json".into());
    expected.data = Some(payload.clone());
    assert_eq!(envelope, expected);
    // Encoding it again gives the same headers.
    let (encoded, encoded_payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
    for (name, value) in headers.iter() {
        assert_eq!(
            encoded.get_all(name.clone()).collect::<Vec<_>>(),
            value.iter().collect::<Vec<_>>()
        );
    }
    assert_eq!(encoded.len(), headers.len());
    assert_eq!(encoded_payload, payload);
}

#[test]
fn binary_lenient_decoding() {
    let headers = headers(&[
        ("CE-SpecVersion", "1.0"),
        ("Ce-Id", "\"quoted \\\"id\\\"\""),
        ("ce-SOURCE", "/caf%c3%a9"),
        ("cE-Type", "com.example.someevent"),
        ("ce-Subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
        ("CE-TIME", "2018-04-05T05:56:24.5+02:00"),
        (
            "Ce-TraceParent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("ce-unnecessary", "%41%42C"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Nats-Msg-Id", "ignored"),
    ]);
    let envelope = codec::decode(Some(&headers), &Bytes::from_static(b"hi")).unwrap();
    assert_eq!(envelope.id, "quoted \"id\"");
    assert_eq!(envelope.source, "/café");
    assert_eq!(envelope.subject.as_deref(), Some("Euro \u{20AC} \u{1F600}"));
    assert_eq!(
        envelope.time,
        Some(
            Utc.with_ymd_and_hms(2018, 4, 5, 3, 56, 24).unwrap()
                + chrono::Duration::milliseconds(500)
        )
    );
    assert_eq!(
        envelope.traceparent(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(
        envelope.extension("unnecessary"),
        Some(&ExtensionValue::from("ABC"))
    );
    // The unprefixed Content-Type stands in for ce-datacontenttype ...
    assert_eq!(
        envelope.data_content_type.as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(envelope.data.as_deref(), Some(&b"hi"[..]));
    // ... but never overrides it.
    let headers = base_with(&[
        ("ce-datacontenttype", "application/json"),
        ("content-type", "text/plain"),
    ]);
    let envelope = codec::decode(Some(&headers), &Bytes::from_static(b"{}")).unwrap();
    assert_eq!(
        envelope.data_content_type.as_deref(),
        Some("application/json")
    );
}

#[test]
fn binary_encoding_is_strict() {
    let mut envelope = Envelope::new("/my source", "com.example.someevent");
    envelope.id = "id".into();
    envelope.time = Some(Utc.timestamp_opt(1_522_900_584, 123_000_000).unwrap());
    envelope.subject = Some("Euro \u{20AC} \u{1F600} \"q\" 100%".into());
    envelope.set_extension("count", 42i64).unwrap();
    envelope.set_extension("flag", true).unwrap();
    envelope.data_content_type = Some("application/octet-stream".into());
    envelope.data = Some(Bytes::from_static(&[0, 159, 146, 150]));
    let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
    let get = |name: &str| headers.get(name).unwrap().as_str().to_owned();
    assert_eq!(get("ce-specversion"), "1.0");
    assert_eq!(get("ce-id"), "id");
    assert_eq!(get("ce-source"), "/my%20source");
    assert_eq!(
        get("ce-subject"),
        "Euro%20%E2%82%AC%20%F0%9F%98%80%20%22q%22%20100%25"
    );
    assert_eq!(get("ce-time"), "2018-04-05T03:56:24.123Z");
    assert_eq!(get("ce-count"), "42");
    assert_eq!(get("ce-flag"), "true");
    assert_eq!(get("ce-datacontenttype"), "application/octet-stream");
    assert!(headers.get("Content-Type").is_none());
    assert_eq!(payload, envelope.data.clone().unwrap());
    // Typed extensions come back as strings in binary mode.
    let decoded = codec::decode(Some(&headers), &payload).unwrap();
    assert_eq!(
        decoded.extension("count"),
        Some(&ExtensionValue::from("42"))
    );
    assert_eq!(decoded.extension("flag").unwrap().to_string(), "true");
}

const JSON_FORMAT_EXAMPLE: &str = r#"{
    "specversion" : "1.0",
    "type" : "com.example.someevent",
    "source" : "/mycontext",
    "id" : "A234-1234-1234",
    "time" : "2018-04-05T17:31:00Z",
    "comexampleextension1" : "value",
    "comexampleothervalue" : 5,
    "unsetextension" : null,
    "flag" : false,
    "datacontenttype" : "application/vnd.apache.thrift.binary",
    "data_base64" : "AAECAwQ="
}"#;

#[test]
fn json_format_examples() {
    let headers = headers(&[(
        "Content-Type",
        "application/cloudevents+json; charset=UTF-8",
    )]);
    let envelope = codec::decode(
        Some(&headers),
        &Bytes::from_static(JSON_FORMAT_EXAMPLE.as_bytes()),
    )
    .unwrap();
    assert_eq!(envelope.id, "A234-1234-1234");
    assert_eq!(
        envelope.extension("comexampleextension1"),
        Some(&ExtensionValue::from("value"))
    );
    assert_eq!(
        envelope.extension("comexampleothervalue"),
        Some(&ExtensionValue::Integer(5))
    );
    assert_eq!(
        envelope.extension("flag"),
        Some(&ExtensionValue::Boolean(false))
    );
    assert_eq!(envelope.extension("unsetextension"), None);
    assert_eq!(envelope.data.as_deref(), Some(&[0u8, 1, 2, 3, 4][..]));

    let json = r#"{"specversion":"1.0","type":"com.example.someevent","source":"/mycontext",
        "subject":null,"id":"C234-1234-1234","datacontenttype":"application/json",
        "data":{ "appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true }}"#;
    let envelope = codec::decode(None, &Bytes::from_static(json.as_bytes())).unwrap();
    assert_eq!(envelope.subject, None);
    // JSON data is kept byte for byte.
    assert_eq!(
        envelope.data.as_deref(),
        Some(&br#"{ "appinfoA" : "abc", "appinfoB" : 123, "appinfoC" : true }"#[..])
    );

    let text = r#"{"specversion":"1.0","type":"t","source":"/s","id":"1",
        "datacontenttype":"text/xml","data":"<much wow=\"xml\"/>"}"#;
    let envelope = codec::decode(None, &Bytes::from_static(text.as_bytes())).unwrap();
    assert_eq!(envelope.data.as_deref(), Some(&br#"<much wow="xml"/>"#[..]));
}

#[test]
fn structured_encoding_layout() {
    let mut envelope = Envelope::new("/s", "t");
    envelope.id = "1".into();
    envelope.time = None;
    envelope.data_content_type = Some("application/json".into());
    envelope.data = Some(Bytes::from_static(br#"{"a":1}"#));
    envelope.set_extension("n", 7i64).unwrap();
    let (headers, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/cloudevents+json"
    );
    assert_eq!(
        std::str::from_utf8(&payload).unwrap(),
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","n":7,"data":{"a":1}}"#
    );
    envelope.data_content_type = Some("application/octet-stream".into());
    envelope.data = Some(Bytes::from_static(b"\x00\x01\x02\x03\x04"));
    let (_, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
    assert!(std::str::from_utf8(&payload)
        .unwrap()
        .ends_with(r#""data_base64":"AAECAwQ="}"#));
}

#[test]
fn cloudevents_sdk_interop() {
    let mut envelope = Envelope::new("/iam", "iam.user.created.v1");
    envelope.subject = Some("user 1".into());
    envelope.data_content_type = Some("application/json".into());
    envelope.data = Some(Bytes::from_static(br#"{"name":"ana"}"#));
    envelope.data_schema = Some("https://schemas.example.com/user.json".into());
    envelope.set_correlation_id("flow-1");
    envelope.set_extension("attempt", 2i64).unwrap();

    // Ours -> SDK JSON -> ours.
    let (_, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
    let sdk: cloudevents::Event = serde_json::from_slice(&payload).unwrap();
    assert_eq!(Envelope::try_from(sdk.clone()).unwrap(), envelope);
    assert_eq!(cloudevents::Event::from(envelope.clone()), sdk);

    // SDK JSON -> ours.
    let json = serde_json::to_vec(&sdk).unwrap();
    let decoded = codec::decode(None, &Bytes::from(json)).unwrap();
    assert_eq!(decoded, envelope);
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct AppointmentConfirmed {
    appointment_id: String,
    minutes: u32,
}

impl Event for AppointmentConfirmed {
    const TYPE: &'static str = "booking.appointment.confirmed.v1";
    fn key(&self) -> Option<String> {
        Some(self.appointment_id.clone())
    }
    fn data_schema() -> Option<&'static str> {
        Some("https://schemas.example.com/appointment-confirmed-v1.json")
    }
}

#[test]
fn typed_events_in_both_modes() {
    let event = AppointmentConfirmed {
        appointment_id: "ap.1/ü".into(),
        minutes: 30,
    };
    let envelope = Envelope::from_event("/booking", &event).unwrap();
    assert_eq!(envelope.event_type, AppointmentConfirmed::TYPE);
    assert_eq!(
        envelope.data_content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        envelope.data_schema.as_deref(),
        AppointmentConfirmed::data_schema()
    );
    assert_eq!(envelope.partition_key(), Some("ap.1/ü"));
    assert_eq!(
        uuid::Uuid::parse_str(&envelope.id)
            .unwrap()
            .get_version_num(),
        7
    );
    for encoding in [Encoding::Binary, Encoding::Structured] {
        let (headers, payload) = codec::encode(&envelope, encoding).unwrap();
        let decoded = codec::decode(Some(&headers), &payload).unwrap();
        assert_eq!(
            decoded.decode_data::<AppointmentConfirmed>().unwrap(),
            event
        );
    }
}

#[test]
fn wire_size_counts_header_block() {
    let mut envelope = Envelope::new("/s", "t");
    envelope.data = Some(Bytes::from_static(b"12345"));
    let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
    let mut block = String::from("NATS/1.0\r\n");
    for (name, values) in headers.iter() {
        for value in values {
            block.push_str(&format!("{name}: {}\r\n", value.as_str()));
        }
    }
    block.push_str("\r\n");
    assert_eq!(codec::wire_size(&headers, payload.len()), block.len() + 5);
    assert_eq!(codec::wire_size(&HeaderMap::new(), 5), 5);
}

// ---- one test per decode error kind ----

#[test]
fn missing_attribute() {
    for (i, name) in ["specversion", "id", "source", "type"]
        .into_iter()
        .enumerate()
    {
        let mut pairs = BASE.to_vec();
        pairs.remove(i);
        let kind = decode_err(&headers(&pairs), b"");
        assert_eq!(kind, DecodeErrorKind::MissingAttribute(name));
    }
    assert_eq!(
        structured_err(r#"{"specversion":"1.0","id":"1","source":"/s"}"#),
        DecodeErrorKind::MissingAttribute("type")
    );
}

#[test]
fn unsupported_spec_version() {
    let mut pairs = BASE.to_vec();
    pairs[0] = ("ce-specversion", "0.3");
    assert_eq!(
        decode_err(&headers(&pairs), b""),
        DecodeErrorKind::UnsupportedSpecVersion("0.3".into())
    );
    assert_eq!(
        structured_err(r#"{"specversion":"1.1","id":"1","source":"/s","type":"t"}"#),
        DecodeErrorKind::UnsupportedSpecVersion("1.1".into())
    );
}

#[test]
fn invalid_header_value() {
    for bad in [
        "%C0%A0",
        "%FF",
        "%ED%A0%80",
        // Invalid UTF-8 from escapes, among raw text and a literal '%'.
        "%C3%28",
        "caf%C3 50% off",
        "%E2%82 \u{2615}",
        "\"%C3%28\"",
        "a%0Ab",
        "a%7Fb",
        "\"a%0Ab\"",
    ] {
        let kind = decode_err(&base_with(&[("ce-subject", bad)]), b"");
        assert_eq!(
            kind,
            DecodeErrorKind::InvalidHeaderValue {
                header: "ce-subject".into()
            },
            "{bad:?}"
        );
    }
}

/// Asserts that each raw `ce-subject` value decodes to its expected subject.
fn assert_decoded_subjects(cases: &[(&str, &str)]) {
    for (raw, expected) in cases {
        let envelope = codec::decode(Some(&base_with(&[("ce-subject", raw)])), &Bytes::new())
            .unwrap_or_else(|err| panic!("{raw:?}: {err}"));
        assert_eq!(envelope.subject.as_deref(), Some(*expected), "{raw:?}");
    }
}

#[test]
fn a_percent_that_starts_no_escape_is_literal() {
    assert_decoded_subjects(&[
        ("%", "%"),
        ("100%", "100%"),
        ("a%2", "a%2"),
        ("%4", "%4"),
        ("%G0", "%G0"),
        ("%zz", "%zz"),
        ("%%", "%%"),
        ("50% off", "50% off"),
        // A valid escape always wins, also right after a literal '%'.
        ("%41", "A"),
        ("100%25", "100%"),
        ("%%41", "%A"),
        ("%e2%82%ac 5% \u{2615}", "\u{20AC} 5% \u{2615}"),
        ("\"50% off\"", "50% off"),
    ]);
}

#[test]
fn double_quotes_are_literal_unless_they_wrap_the_whole_value() {
    assert_decoded_subjects(&[
        ("say \"hi\"", "say \"hi\""),
        ("\"hi\" she said", "\"hi\" she said"),
        ("\"unterminated", "\"unterminated"),
        ("\"a\"b", "\"a\"b"),
        ("\"", "\""),
        ("\"ends with a backslash\\\"", "\"ends with a backslash\\\""),
        // One whole quoted-string (RFC 7230) is unquoted, escapes and all.
        ("\"hi\"", "hi"),
        ("\"a \\\"b\\\"\"", "a \"b\""),
        ("\"a\\b\"", "ab"),
    ]);
}

#[test]
fn js_sdk_binary_headers_decode_to_their_attribute_values() {
    for n in 0..foreign_sdk::JS_SDK_SUBJECTS.len() {
        let (headers, body) = foreign_sdk::js_sdk_message(n);
        let envelope = codec::decode(Some(&headers), &body)
            .unwrap_or_else(|err| panic!("{:?}: {err}", foreign_sdk::JS_SDK_SUBJECTS[n]));
        foreign_sdk::assert_js_sdk_attributes(n, &envelope);
        assert_eq!(envelope.data, Some(body));
        // What was read leniently is written strictly, and reads back.
        let (encoded, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
        let strict = |value: &str| {
            value
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"')
        };
        assert!(encoded
            .iter()
            .flat_map(|(_, values)| values)
            .all(|value| strict(value.as_str())));
        assert_eq!(codec::decode(Some(&encoded), &payload).unwrap(), envelope);
    }
}

#[test]
fn invalid_json() {
    for bad in [
        "",
        "not json",
        "[1,2]",
        r#"{"specversion":"1.0""#,
        r#"{"specversion":"1.0",}"#,
        r#"{"specversion":"1.0"} trailing"#,
        r#"{"specversion" "1.0"}"#,
    ] {
        assert_eq!(structured_err(bad), DecodeErrorKind::InvalidJson, "{bad:?}");
    }
    let ct = headers(&[("content-type", "Application/CloudEvents+JSON")]);
    assert_eq!(decode_err(&ct, b"{"), DecodeErrorKind::InvalidJson);
}

fn assert_invalid_attribute(kind: DecodeErrorKind, expected: &str) {
    match kind {
        DecodeErrorKind::InvalidAttribute { name, .. } => assert_eq!(name, expected),
        other => panic!("expected InvalidAttribute({expected}), got {other:?}"),
    }
}

#[test]
fn invalid_attribute() {
    let mut pairs = BASE.to_vec();
    pairs[1] = ("ce-id", "");
    assert_invalid_attribute(decode_err(&headers(&pairs), b""), "id");
    assert_invalid_attribute(
        decode_err(&base_with(&[("ce-time", "yesterday")]), b""),
        "time",
    );
    assert_invalid_attribute(decode_err(&base_with(&[("CE-ID", "other")]), b""), "id");
    assert_invalid_attribute(
        decode_err(&base_with(&[("ce-x", "1"), ("ce-x", "2")]), b""),
        "x",
    );
    assert_invalid_attribute(decode_err(&base_with(&[("ce-my_ext", "1")]), b""), "my_ext");
    assert_invalid_attribute(decode_err(&base_with(&[("ce-data", "1")]), b""), "data");
    assert_invalid_attribute(
        decode_err(&base_with(&[("content-type", "a\u{1}b")]), b""),
        "datacontenttype",
    );
    let s =
        |rest: &str| format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t"{rest}}}"#);
    assert_invalid_attribute(structured_err(&s(r#","id":"2""#)), "id");
    assert_invalid_attribute(structured_err(&s(r#","subject":5"#)), "subject");
    assert_invalid_attribute(structured_err(&s(r#","subject":"""#)), "subject");
    assert_invalid_attribute(structured_err(&s(r#","subject":"a\u0000b""#)), "subject");
    assert_invalid_attribute(
        structured_err(&s(r#","time":"2018-13-01T00:00:00Z""#)),
        "time",
    );
    assert_invalid_attribute(
        structured_err(&s(r#","data":1,"data_base64":"AA==""#)),
        "data",
    );
    assert_invalid_attribute(structured_err(&s(r#","data_base64":"!!""#)), "data_base64");
    assert_invalid_attribute(structured_err(&s(r#","Bad-Name":"x""#)), "Bad-Name");
    assert_invalid_attribute(structured_err(&s(r#","ext":1.5"#)), "ext");
    assert_invalid_attribute(structured_err(&s(r#","ext":[1]"#)), "ext");
}

#[test]
fn invalid_data_and_type_checks() {
    let mut envelope = Envelope::new("/s", AppointmentConfirmed::TYPE);
    envelope.data_content_type = Some("application/json".into());
    envelope.data = Some(Bytes::from_static(br#"{"appointment_id":5}"#));
    assert_eq!(
        envelope
            .decode_data::<AppointmentConfirmed>()
            .unwrap_err()
            .into_kind(),
        DecodeErrorKind::InvalidData
    );
    let mut other = envelope.clone();
    other.event_type = "booking.appointment.cancelled.v1".into();
    assert_eq!(
        other
            .decode_data::<AppointmentConfirmed>()
            .unwrap_err()
            .into_kind(),
        DecodeErrorKind::TypeMismatch {
            expected: AppointmentConfirmed::TYPE.into(),
            actual: "booking.appointment.cancelled.v1".into()
        }
    );
    let mut binary = envelope;
    binary.data_content_type = Some("application/octet-stream".into());
    assert_eq!(
        binary
            .decode_data::<AppointmentConfirmed>()
            .unwrap_err()
            .into_kind(),
        DecodeErrorKind::UnsupportedContentType("application/octet-stream".into())
    );
}

#[test]
fn unsupported_structured_format() {
    let ct = headers(&[("Content-Type", "application/cloudevents+avro")]);
    assert_eq!(
        decode_err(&ct, b"\x00"),
        DecodeErrorKind::UnsupportedContentType("application/cloudevents+avro".into())
    );
}

// ---- encode errors ----

#[test]
fn encode_errors() {
    let mut envelope = Envelope::new("/s", "t");
    assert!(matches!(
        envelope.set_extension("id", "x").unwrap_err().kind(),
        EncodeErrorKind::InvalidExtensionName(name) if name == "id"
    ));
    assert!(envelope.set_extension("Upper", "x").is_err());
    assert!(envelope.set_extension("", "x").is_err());
    // The map refuses a name that could not be encoded, so no envelope
    // carries one to the encoder.
    assert!(matches!(
        envelope.extensions.insert("with-dash", "x").unwrap_err().kind(),
        EncodeErrorKind::InvalidExtensionName(name) if name == "with-dash"
    ));
    assert!(!envelope.extensions.contains_key("with-dash"));
    let invalid = |envelope: &Envelope, expected: &str| {
        for encoding in [Encoding::Binary, Encoding::Structured] {
            match codec::encode(envelope, encoding).unwrap_err().into_kind() {
                EncodeErrorKind::InvalidAttribute { name, .. } => assert_eq!(name, expected),
                other => panic!("{other:?}"),
            }
        }
    };
    let base = Envelope::new("/s", "t");
    let changed = |change: fn(&mut Envelope)| {
        let mut envelope = base.clone();
        change(&mut envelope);
        envelope
    };
    invalid(&changed(|e| e.id = String::new()), "id");
    invalid(&changed(|e| e.source = String::new()), "source");
    invalid(&changed(|e| e.subject = Some("a\nb".into())), "subject");
    invalid(
        &changed(|e| e.time = Some(Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap())),
        "time",
    );
    let mut with_ext = base.clone();
    with_ext.set_extension("note", "tab\there").unwrap();
    invalid(&with_ext, "note");

    #[derive(Serialize, Deserialize)]
    struct Unserializable(std::collections::HashMap<(u8, u8), u8>);
    impl Event for Unserializable {
        const TYPE: &'static str = "a.b.c.v1";
    }
    let value = Unserializable([((1, 2), 3)].into_iter().collect());
    assert_eq!(
        Envelope::from_event("/s", &value).unwrap_err().into_kind(),
        EncodeErrorKind::Serialize
    );
}

/// Found by the fuzzer: JSON data with surrounding whitespace must keep its
/// exact bytes through structured mode.
#[test]
fn structured_keeps_whitespace_around_json_data() {
    for ct in [None, Some("application/json".to_owned())] {
        let mut envelope = Envelope::new("/s", "t");
        envelope.data_content_type = ct;
        envelope.data = Some(Bytes::from_static(b"\r\n\r\n{\"a\":1} "));
        let (headers, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
        assert_eq!(codec::decode(Some(&headers), &payload).unwrap(), envelope);
    }
}
