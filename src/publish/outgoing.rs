//! What one publish sends, kept until the event settles: enough to encode it
//! again for a retry (same id, time and trace context) and to write its
//! receipt.
//!
//! A typed event in binary mode, almost every publish, never becomes an
//! [`Envelope`]: its `ce-*` headers are written straight from the event's
//! static type, the client's source and the few values of its own below.
//! Building an envelope (a dozen small allocations) and dropping it again
//! cost about a microsecond per event, a third of the publisher's overhead
//! over raw async-nats (BENCHMARKS.md). Nor does it keep its key and JSON:
//! the first attempt takes them, and the rare retry asks the event again
//! (the caller holds it until the publish returns). Everything else
//! (structured mode, free-form metadata, ready envelopes) goes through an
//! envelope and the codec, and a test holds both paths to the same headers.

use async_nats::header::{HeaderValue, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::shared_headers::SharedHeaders;
use crate::codec::binary::{
    attribute_value, attribute_value_owned, CE_CAUSATIONID, CE_CORRELATIONID, CE_ID,
    CE_PARTITIONKEY, CE_TIME,
};
use crate::codec::{self, EncodeError, EncodeErrorKind, Encoding};
use crate::envelope::{Envelope, CAUSATION_ID, CORRELATION_ID, PARTITION_KEY};
use crate::event::Event;
use crate::trace::TraceHeaders;

/// The event of one publish, borrowing the typed event it came from.
pub(super) enum Outgoing<'a> {
    /// A typed event sent in binary mode, headers written without an envelope.
    Typed(TypedEvent<'a>),
    /// An envelope, encoded by the codec.
    Envelope {
        envelope: Envelope,
        encoding: Encoding,
    },
}

/// A typed event's attributes that are its publish's own: the source comes
/// from the client's configuration, the key and the JSON from the event.
pub(super) struct TypedEvent<'a> {
    pub(super) event: &'a dyn Serialized,
    /// The key given in the publish options, which overrides the event's.
    pub(super) key_option: Option<&'a str>,
    pub(super) id: String,
    pub(super) event_type: &'static str,
    pub(super) data_schema: Option<&'static str>,
    pub(super) time: DateTime<Utc>,
    pub(super) correlation_id: Option<String>,
    pub(super) causation_id: Option<String>,
    pub(super) trace: Option<TraceHeaders>,
}

/// A typed event's key and JSON, for each attempt that needs them.
pub(super) trait Serialized: Sync {
    /// The event's own key (`Event::key`).
    fn key(&self) -> Option<String>;
    /// The event as JSON.
    fn json(&self) -> Result<Vec<u8>, EncodeError>;
}

impl<E: Event> Serialized for E {
    fn key(&self) -> Option<String> {
        Event::key(self)
    }

    fn json(&self) -> Result<Vec<u8>, EncodeError> {
        serde_json::to_vec(self)
            .map_err(|err| EncodeError::with_source(EncodeErrorKind::Serialize, err))
    }
}

/// A typed event's key and JSON as one attempt sends them, and the headers
/// it shares with the other events of its call, when made for them all.
pub(super) struct KeyAndData<'s> {
    pub(super) key: Option<String>,
    pub(super) data: Bytes,
    pub(super) shared: Option<&'s SharedHeaders>,
}

impl TypedEvent<'_> {
    /// The event's key: the options' or its own.
    pub(super) fn key(&self) -> Option<String> {
        match self.key_option {
            Some(key) => Some(key.to_owned()),
            None => self.event.key(),
        }
    }

    /// The event's key and JSON.
    pub(super) fn key_and_data(&self) -> Result<KeyAndData<'static>, EncodeError> {
        Ok(KeyAndData {
            key: self.key(),
            data: Bytes::from(self.event.json()?),
            shared: None,
        })
    }
}

impl Outgoing<'_> {
    /// The event's id, also its `Nats-Msg-Id`.
    pub(super) fn event_id(&self) -> &str {
        match self {
            Outgoing::Typed(event) => &event.id,
            Outgoing::Envelope { envelope, .. } => &envelope.id,
        }
    }

    /// The event's id, taking it for the receipt.
    pub(super) fn into_event_id(self) -> String {
        match self {
            Outgoing::Typed(event) => event.id,
            Outgoing::Envelope { envelope, .. } => envelope.id,
        }
    }

    /// The CloudEvents `type`.
    pub(super) fn event_type(&self) -> &str {
        match self {
            Outgoing::Typed(event) => event.event_type,
            Outgoing::Envelope { envelope, .. } => &envelope.event_type,
        }
    }

    /// The CloudEvents `source`: the client's for a typed event.
    pub(super) fn source<'a>(&'a self, client_source: &'a str) -> &'a str {
        match self {
            Outgoing::Typed(_) => client_source,
            Outgoing::Envelope { envelope, .. } => &envelope.source,
        }
    }

    /// The `correlationid` extension.
    pub(super) fn correlation_id(&self) -> Option<&str> {
        match self {
            Outgoing::Typed(event) => event.correlation_id.as_deref(),
            Outgoing::Envelope { envelope, .. } => envelope.correlation_id(),
        }
    }

    /// Sets the `causationid` extension.
    pub(super) fn set_causation_id(&mut self, id: String) {
        match self {
            Outgoing::Typed(event) => event.causation_id = Some(id),
            Outgoing::Envelope { envelope, .. } => envelope.set_causation_id(id),
        }
    }

    /// Sets the `correlationid` extension.
    pub(super) fn set_correlation_id(&mut self, id: String) {
        match self {
            Outgoing::Typed(event) => event.correlation_id = Some(id),
            Outgoing::Envelope { envelope, .. } => envelope.set_correlation_id(id),
        }
    }

    /// Sets the `traceparent` and `tracestate` extensions.
    pub(super) fn set_trace(&mut self, trace: TraceHeaders) {
        match self {
            Outgoing::Typed(event) => event.trace = Some(trace),
            Outgoing::Envelope { envelope, .. } => trace.write_into(envelope),
        }
    }

    /// The headers and payload as sent: the CloudEvents encoding (which
    /// checks the id) plus `Nats-Msg-Id` (the event id, for the server's
    /// dedup) and the optimistic concurrency expectation. `source` is the
    /// client's, for typed events; `typed` their key and JSON when already at
    /// hand (asked of the event when `None`).
    pub(super) fn encode(
        &self,
        source: &str,
        expected_last_subject_sequence: Option<u64>,
        typed: Option<KeyAndData<'_>>,
    ) -> Result<(HeaderMap, Bytes), EncodeError> {
        let (mut headers, payload) = match self {
            Outgoing::Typed(event) => {
                let KeyAndData { key, data, shared } = match typed {
                    Some(parts) => parts,
                    None => event.key_and_data()?,
                };
                (event.write_headers(source, key, shared)?, data)
            }
            Outgoing::Envelope { envelope, encoding } => {
                let mut headers = HeaderMap::new();
                let payload = codec::encode_into(envelope, *encoding, &mut headers)?;
                (headers, payload)
            }
        };
        headers.insert(NATS_MESSAGE_ID, self.event_id());
        if let Some(sequence) = expected_last_subject_sequence {
            headers.insert(
                NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                itoa::Buffer::new().format(sequence),
            );
        }
        Ok((headers, payload))
    }
}

impl TypedEvent<'_> {
    /// The binary mode's `ce-*` headers, values checked and escaped as the
    /// codec does for an envelope (`shared`: those of the event's type,
    /// checked already). The time, the content type and the
    /// `traceparent` are made here and need neither; the id may be the
    /// caller's, and this check is what refuses an invalid one before
    /// `encode` puts it in `Nats-Msg-Id`.
    fn write_headers(
        &self,
        source: &str,
        key: Option<String>,
        shared: Option<&SharedHeaders>,
    ) -> Result<HeaderMap, EncodeError> {
        // Checked first, as the envelope's validation does.
        let id = attribute_value("id", &self.id, true)?;
        let mut headers = match shared {
            Some(shared) => shared.start(),
            None => SharedHeaders::new(source, self.event_type, self.data_schema)?.into_map(),
        };
        headers.insert(CE_ID, id);
        headers.insert(CE_TIME, HeaderValue::from(codec::format_time(&self.time)));
        if let Some(key) = key {
            headers.insert(
                CE_PARTITIONKEY,
                attribute_value_owned(PARTITION_KEY, key, false)?,
            );
        }
        if let Some(id) = &self.correlation_id {
            headers.insert(
                CE_CORRELATIONID,
                attribute_value(CORRELATION_ID, id, false)?,
            );
        }
        if let Some(id) = &self.causation_id {
            headers.insert(CE_CAUSATIONID, attribute_value(CAUSATION_ID, id, false)?);
        }
        if let Some(trace) = &self.trace {
            trace.insert_into(&mut headers)?;
        }
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use proptest::prelude::*;
    use std::str::FromStr;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Booked {
        appointment_id: String,
    }

    impl crate::Event for Booked {
        const TYPE: &'static str = "booking.appointment.booked.v1";
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct WithSchema {
        n: u32,
    }

    impl crate::Event for WithSchema {
        const TYPE: &'static str = "booking.appointment.moved.v2";
        fn data_schema() -> Option<&'static str> {
            Some("https://schemas.example/moved v2.json")
        }
    }

    /// A header map as sorted (lower-case name, values) pairs: comparable.
    fn sorted(headers: &HeaderMap) -> Vec<(String, Vec<String>)> {
        let mut pairs: Vec<_> = headers
            .iter()
            .map(|(name, values)| {
                (
                    name.to_string().to_ascii_lowercase(),
                    values.iter().map(|v| v.as_str().to_owned()).collect(),
                )
            })
            .collect();
        pairs.sort();
        pairs
    }

    fn trace(state: Option<&str>) -> TraceHeaders {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            state
                .map(|s| TraceState::from_str(s).unwrap())
                .unwrap_or_default(),
        );
        TraceHeaders::of(&opentelemetry::Context::new().with_remote_span_context(span)).unwrap()
    }

    type Outcome = Result<(Vec<(String, Vec<String>)>, Bytes), codec::EncodeErrorKind>;

    /// The encoding of one event both ways: as a typed event, and as the
    /// envelope `Envelope::from_event_with_key` makes of it with the same id,
    /// time, lineage and trace context set through the same setters.
    fn both<E: crate::Event>(
        event: &E,
        key: Option<String>,
        lineage: Option<String>,
        trace: Option<TraceHeaders>,
        source: &str,
    ) -> (Outcome, Outcome) {
        let envelope = Envelope::from_event_with_key(source, event, key.clone()).unwrap();
        let mut typed = Outgoing::Typed(TypedEvent {
            event,
            key_option: key.as_deref(),
            id: envelope.id.clone(),
            event_type: E::TYPE,
            data_schema: E::data_schema(),
            time: envelope.time.unwrap(),
            correlation_id: None,
            causation_id: None,
            trace: None,
        });
        let mut enveloped = Outgoing::Envelope {
            envelope,
            encoding: Encoding::Binary,
        };
        for outgoing in [&mut typed, &mut enveloped] {
            if let Some(id) = &lineage {
                outgoing.set_causation_id(id.clone());
                outgoing.set_correlation_id(format!("{id}-flow"));
            }
            if let Some(trace) = &trace {
                outgoing.set_trace(trace.clone());
            }
        }
        let outcome = |outgoing: &Outgoing, parts: Option<KeyAndData<'_>>| {
            outgoing
                .encode(source, Some(7), parts)
                .map(|(headers, payload)| (sorted(&headers), payload))
                .map_err(|err| err.kind().clone())
        };
        // The typed event through its type's shared headers, as
        // `publish_many` sends it, when the type's values are valid.
        let shared = SharedHeaders::new(source, E::TYPE, E::data_schema()).ok();
        let parts = match &typed {
            Outgoing::Typed(event) => Some(KeyAndData {
                shared: shared.as_ref(),
                ..event.key_and_data().unwrap()
            }),
            Outgoing::Envelope { .. } => None,
        };
        (outcome(&typed, parts), outcome(&enveloped, None))
    }

    fn booked() -> Booked {
        Booked {
            appointment_id: "a-1".into(),
        }
    }

    #[test]
    fn typed_headers_are_the_envelope_headers() {
        let cases = [
            both(&booked(), None, None, None, "/booking"),
            both(
                &booked(),
                Some("a-1".into()),
                Some("flow 7".into()),
                Some(trace(None)),
                "/booking service",
            ),
            both(
                &WithSchema { n: 3 },
                Some("caf\u{e9} key".into()),
                None,
                Some(trace(Some("vendor=1"))),
                "/booking",
            ),
        ];
        for (typed, enveloped) in cases {
            let (typed, enveloped) = (typed.unwrap(), enveloped.unwrap());
            assert_eq!(typed, enveloped);
            for name in [
                "nats-msg-id",
                "nats-expected-last-subject-sequence",
                "ce-id",
            ] {
                assert!(typed.0.iter().any(|(n, _)| n == name), "{name} missing");
            }
        }
    }

    #[test]
    fn a_retry_sends_what_the_first_attempt_sent() {
        let event = booked();
        let typed = TypedEvent {
            event: &event,
            key_option: Some("a 1"),
            id: crate::envelope::new_id(),
            event_type: "booking.appointment.booked.v1",
            data_schema: None,
            time: Utc::now(),
            correlation_id: Some("flow".into()),
            causation_id: None,
            trace: Some(trace(None)),
        };
        let first = typed.key_and_data().unwrap();
        assert_eq!(first.key.as_deref(), Some("a 1"));
        let outgoing = Outgoing::Typed(typed);
        let (first_headers, first_payload) = outgoing.encode("/s", None, Some(first)).unwrap();
        let (retry_headers, retry_payload) = outgoing.encode("/s", None, None).unwrap();
        assert_eq!(sorted(&first_headers), sorted(&retry_headers));
        assert_eq!(first_payload, retry_payload);
        assert_eq!(
            first_headers.get("ce-partitionkey").unwrap().as_str(),
            "a%201"
        );
    }

    #[test]
    fn typed_values_are_refused_as_the_envelope_refuses_them() {
        for (key, source) in [(Some("a\nb".to_owned()), "/s"), (None, "")] {
            let (typed, enveloped) = both(&booked(), key, None, None, source);
            assert!(typed.is_err());
            assert_eq!(typed, enveloped);
        }
    }

    proptest! {
        #[test]
        fn any_typed_event_encodes_as_its_envelope(
            key in proptest::option::of(any::<String>()),
            lineage in proptest::option::of(any::<String>()),
            source in any::<String>(),
            traced in any::<bool>(),
        ) {
            let trace = traced.then(|| trace(Some("a=1,b=2")));
            let (typed, enveloped) = both(&booked(), key, lineage, trace, &source);
            prop_assert_eq!(typed, enveloped);
        }
    }
}
