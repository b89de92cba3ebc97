//! Property tests: every valid envelope survives both modes, subjects are
//! always one literal subject, keys escape reversibly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetevents::codec::{self, Encoding};
use jetevents::envelope::{Envelope, ExtensionName, ExtensionValue, Extensions};
use jetevents::event::EventType;
use jetevents::subject::{escape_key, unescape_key, validate_token, Subjects, MAX_KEY_TOKEN_LEN};
use proptest::prelude::*;

/// Any string without the control characters CloudEvents forbids.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect()),
        // Printable ASCII, where the characters that need escaping (space,
        // '"', '%') and the quoting/escape look-alikes are frequent.
        "[ -~]{0,30}",
        "[ \"%\\\\a-c]{0,10}",
        // Values that look percent-encoded: they must come back literally.
        "[ \"%0-9A-Fa-f\u{e9}\u{2615}]{0,12}",
    ]
}

/// A header value as any sender may write it: printable ASCII, raw UTF-8,
/// quotes, `%` with or without hex digits after it.
fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "[ \"%\\\\0-9A-Fa-gz\u{e9}\u{2615}]{0,20}",
        any::<String>().prop_map(|s| s.chars().filter(|c| !c.is_control()).collect()),
    ]
}

/// Whether `value` holds a `%XX` escape, or is wrapped in double quotes:
/// the two cases where a raw value does not decode to itself.
fn reads_as_encoded(value: &str) -> bool {
    let bytes = value.as_bytes();
    let is_escape = |i: usize| {
        bytes[i] == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    };
    (0..bytes.len()).any(is_escape)
        || (value.len() >= 2 && value.starts_with('"') && value.ends_with('"'))
}

/// The envelope of a binary-mode message whose `ce-subject` is `raw`.
fn decode_subject(raw: &str) -> Result<Envelope, codec::DecodeError> {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-subject", raw),
    ] {
        headers.insert(name, value);
    }
    codec::decode(Some(&headers), &Bytes::new())
}

fn non_empty_text() -> impl Strategy<Value = String> {
    text().prop_map(|s| if s.is_empty() { "x".to_owned() } else { s })
}

fn extension_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,20}".prop_filter("reserved", |name| {
        ![
            "specversion",
            "id",
            "source",
            "type",
            "subject",
            "time",
            "datacontenttype",
            "dataschema",
            "data",
        ]
        .contains(&name.as_str())
    })
}

fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        text().prop_map(ExtensionValue::String),
        any::<bool>().prop_map(ExtensionValue::Boolean),
        any::<i64>().prop_map(ExtensionValue::Integer),
    ]
}

fn time() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    // Years 0..=9999, the RFC 3339 range.
    proptest::option::of(
        (-62_167_219_200i64..253_402_300_799, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap()),
    )
}

fn json_data() -> impl Strategy<Value = Bytes> {
    proptest::collection::btree_map(
        text(),
        prop_oneof![
            text().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
        ],
        0..5,
    )
    .prop_map(|map| Bytes::from(serde_json::to_vec(&map).unwrap()))
}

fn content_and_data() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
    prop_oneof![
        Just((None, None)),
        json_data().prop_map(|d| (Some("application/json".to_owned()), Some(d))),
        json_data().prop_map(|d| (None, Some(d))),
        // JSON text with insignificant whitespace around it.
        json_data().prop_map(|d| (None, Some(Bytes::from([b" \n", &d[..], b"\t"].concat())))),
        json_data().prop_map(|d| (Some("application/vnd.acme+json".to_owned()), Some(d))),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|d| (
            Some("application/octet-stream".to_owned()),
            Some(Bytes::from(d))
        )),
        proptest::collection::vec(any::<u8>(), 0..100).prop_map(|d| (
            Some("application/x-protobuf".to_owned()),
            Some(Bytes::from(d))
        )),
        text().prop_map(|t| (
            Some("text/plain; charset=utf-8".to_owned()),
            Some(Bytes::from(t))
        )),
        // Declared JSON but not JSON: must still round-trip byte for byte.
        proptest::collection::vec(any::<u8>(), 1..50)
            .prop_map(|d| (Some("application/json".to_owned()), Some(Bytes::from(d)))),
    ]
}

prop_compose! {
    fn envelope()(
        id in non_empty_text(),
        source in non_empty_text(),
        event_type in non_empty_text(),
        subject in proptest::option::of(non_empty_text()),
        time in time(),
        data_schema in proptest::option::of(non_empty_text()),
        extensions in proptest::collection::btree_map(extension_name(), extension_value(), 0..6),
        (data_content_type, data) in content_and_data(),
    ) -> Envelope {
        // `Envelope` is non_exhaustive: start from `new` and set every field.
        let mut envelope = Envelope::new(source, event_type);
        envelope.id = id;
        envelope.subject = subject;
        envelope.time = time;
        envelope.data_content_type = data_content_type;
        envelope.data_schema = data_schema;
        envelope.extensions = extensions
            .into_iter()
            .map(|(name, value)| (ExtensionName::new(&name).unwrap(), value))
            .collect();
        envelope.data = data;
        envelope
    }
}

/// What binary mode can carry: extensions as strings, empty data as none.
fn as_binary_sees_it(envelope: &Envelope) -> Envelope {
    let mut expected = envelope.clone();
    expected.extensions = envelope
        .extensions
        .iter()
        .map(|(k, v)| (ExtensionName::new(k).unwrap(), v.to_string()))
        .collect::<Extensions>();
    if expected.data.as_ref().is_some_and(|d| d.is_empty()) {
        expected.data = None;
    }
    expected
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn binary_round_trip(envelope in envelope()) {
        let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
        // Every header value is printable ASCII without space, quote or CR/LF.
        for (_, values) in headers.iter() {
            for value in values {
                prop_assert!(value.as_str().bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'));
            }
        }
        let decoded = codec::decode(Some(&headers), &payload).unwrap();
        prop_assert_eq!(decoded, as_binary_sees_it(&envelope));
    }

    #[test]
    fn structured_round_trip(envelope in envelope()) {
        let (headers, payload) = codec::encode(&envelope, Encoding::Structured).unwrap();
        prop_assert_eq!(headers.len(), 1);
        let decoded = codec::decode(Some(&headers), &payload).unwrap();
        prop_assert_eq!(&decoded, &envelope);
        // Also without headers, as from a structured-only sender.
        let decoded = codec::decode(None, &payload).unwrap();
        prop_assert_eq!(decoded, envelope);
    }

    #[test]
    fn encode_into_keeps_other_headers(envelope in envelope(), encoding in prop_oneof![Just(Encoding::Binary), Just(Encoding::Structured)]) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.id.len().to_string().as_str());
        let payload = codec::encode_into(&envelope, encoding, &mut headers).unwrap();
        prop_assert!(headers.get("Nats-Msg-Id").is_some());
        let decoded = codec::decode(Some(&headers), &payload).unwrap();
        prop_assert_eq!(decoded.id, envelope.id);
    }

    #[test]
    fn percent_decoding_accepts_lower_case_hex(value in non_empty_text()) {
        let mut envelope = Envelope::new("/s", "t");
        envelope.subject = Some(value.clone());
        let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
        let encoded = headers.get("ce-subject").unwrap().as_str();
        // Lower-case every hex digit that follows a '%'.
        let mut lowered = String::new();
        let mut after_percent = 0;
        for c in encoded.chars() {
            if after_percent > 0 { lowered.push(c.to_ascii_lowercase()); after_percent -= 1; }
            else { if c == '%' { after_percent = 2; } lowered.push(c); }
        }
        let mut headers = headers.clone();
        headers.insert("ce-subject", lowered.as_str());
        let decoded = codec::decode(Some(&headers), &payload).unwrap();
        prop_assert_eq!(decoded.subject, Some(value));
    }

    #[test]
    fn decode_never_panics(
        headers in proptest::collection::vec(("[A-Za-z-]{1,20}", header_value()), 0..8),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in &headers {
            map.append(name.as_str(), value.as_str());
        }
        let _ = codec::decode(Some(&map), &Bytes::from(payload.clone()));
        let _ = codec::decode(None, &Bytes::from(payload));
    }

    #[test]
    fn raw_values_decode_to_themselves(
        value in header_value().prop_filter("empty, escaped or quoted", |v| !v.is_empty() && !reads_as_encoded(v)),
    ) {
        let decoded = decode_subject(&value).unwrap();
        prop_assert_eq!(decoded.subject, Some(value));
    }

    #[test]
    fn what_decodes_leniently_encodes_strictly_and_reads_back(raw in header_value()) {
        if let Ok(envelope) = decode_subject(&raw) {
            let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
            let subject = headers.get("ce-subject").unwrap().as_str();
            prop_assert!(subject.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'));
            prop_assert_eq!(codec::decode(Some(&headers), &payload).unwrap(), envelope);
        }
    }

    #[test]
    fn escaped_keys_are_one_reversible_token(key in "\\PC{1,80}|[a-zA-Z0-9._ */>@-]{1,40}") {
        match escape_key(&key) {
            Ok(token) => {
                prop_assert!(token.len() <= MAX_KEY_TOKEN_LEN);
                validate_token(&token).unwrap();
                prop_assert_eq!(unescape_key(&token).unwrap(), key);
            }
            Err(err) => {
                let is_too_long = matches!(err.kind(), jetevents::subject::SubjectErrorKind::KeyTooLong { .. });
                prop_assert!(is_too_long);
            }
        }
    }

    #[test]
    fn event_subjects_are_literal(
        env in "[a-zA-Z0-9_-]{1,12}",
        tokens in proptest::collection::vec("[a-z0-9_-]{1,10}", 3),
        version in 1u32..1000,
        key in proptest::option::of(any::<String>()),
    ) {
        let subjects = Subjects::new(env.clone()).unwrap();
        let ty = EventType::parse(&format!("{}.{}.{}.v{version}", tokens[0], tokens[1], tokens[2])).unwrap();
        let key = key.filter(|k| !k.is_empty() && escape_key(k).is_ok());
        let subject = subjects.event(&ty, key.as_deref()).unwrap();
        let parts: Vec<&str> = subject.split('.').collect();
        prop_assert_eq!(parts.len(), if key.is_some() { 6 } else { 5 });
        prop_assert_eq!(parts[0], env.as_str());
        for part in &parts {
            validate_token(part).unwrap();
        }
        if let Some(key) = key {
            prop_assert_eq!(unescape_key(parts[5]).unwrap(), key);
        }
    }
}
