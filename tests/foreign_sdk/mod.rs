//! Binary-mode messages as other CloudEvents SDKs send them, for the codec
//! fixtures and the end-to-end consumer test.
//!
//! The JavaScript SDK (npm `cloudevents`) has no NATS binding; services
//! reuse its HTTP binary binding and copy the headers onto a NATS message.
//! It writes attribute values raw: UTF-8, double quotes and `%` as they are.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use jetevents::envelope::{Envelope, ExtensionValue};

/// The `subject` values of the JS SDK events: (header value as sent, the
/// attribute value jetevents decodes). They are equal except where the raw
/// value holds a valid `%XX` escape or is one whole quoted-string: there the
/// binding's reading wins (documented in the codec).
pub const JS_SDK_SUBJECTS: &[(&str, &str)] = &[
    ("café ☕", "café ☕"),
    ("say \"hi\"", "say \"hi\""),
    ("\"hi\" she said", "\"hi\" she said"),
    ("\"hi", "\"hi"),
    ("50% off", "50% off"),
    ("100%", "100%"),
    ("%zz", "%zz"),
    ("%4", "%4"),
    ("%", "%"),
    ("%%", "%%"),
    ("caf%C3%A9 50% off", "café 50% off"),
    ("100%25", "100%"),
    ("\"hi\"", "hi"),
];

/// The `comment` extension every JS SDK event carries, raw.
pub const JS_SDK_COMMENT: &str = "ext 50% ☕ \"q\"";

/// The `type` of the JS SDK events (`OrderPlaced` of the consumer tests).
pub const JS_SDK_TYPE: &str = "shop.order.placed.v1";

/// The `id` of JS SDK event `n`: raw, with a literal `%`.
pub fn js_sdk_id(n: usize) -> String {
    format!("js {n} 50%")
}

/// Headers and body of JS SDK event `n` (subject `JS_SDK_SUBJECTS[n].0`),
/// exactly as `HTTP.binary(event)` of `cloudevents` 10.0.0 (node 20) gives
/// them, in its order, for
/// `new CloudEvent({ id: "js <n> 50%", source: "/js-sdk",
/// type: "shop.order.placed.v1", subject, time: "2024-01-02T03:04:05.678Z",
/// datacontenttype: "application/json", data: { order: "o-<n>", n: <n> },
/// comment: 'ext 50% ☕ "q"' })`. The SDK writes `datacontenttype` as the
/// unprefixed `content-type`.
pub fn js_sdk_message(n: usize) -> (HeaderMap, Bytes) {
    let id = js_sdk_id(n);
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/json"),
        ("ce-id", id.as_str()),
        ("ce-time", "2024-01-02T03:04:05.678Z"),
        ("ce-type", JS_SDK_TYPE),
        ("ce-source", "/js-sdk"),
        ("ce-specversion", "1.0"),
        ("ce-subject", JS_SDK_SUBJECTS[n].0),
        ("ce-comment", JS_SDK_COMMENT),
    ] {
        headers.insert(name, value);
    }
    let body = format!(r#"{{"order":"o-{n}","n":{n}}}"#);
    (headers, Bytes::from(body))
}

/// Asserts that `envelope` holds the attributes JS SDK event `n` was
/// created with.
pub fn assert_js_sdk_attributes(n: usize, envelope: &Envelope) {
    let expected_subject = JS_SDK_SUBJECTS[n].1;
    assert_eq!(envelope.id, js_sdk_id(n), "{expected_subject:?}");
    assert_eq!(envelope.source, "/js-sdk");
    assert_eq!(envelope.event_type, JS_SDK_TYPE);
    assert_eq!(envelope.subject.as_deref(), Some(expected_subject));
    assert_eq!(
        envelope.time,
        Some(
            Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::milliseconds(678)
        )
    );
    assert_eq!(
        envelope.data_content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        envelope.extension("comment"),
        Some(&ExtensionValue::from(JS_SDK_COMMENT)),
        "{expected_subject:?}"
    );
}
