//! An append's events as the headers and payloads it sends.
//!
//! In binary mode (the default) an event's `ce-*` headers are written
//! straight from its id, type and data and from what all events of the
//! append share (source, key, lineage, trace context), the latter checked
//! and encoded once per append, as the publisher does for typed events
//! (`publish/outgoing.rs`). Building an [`Envelope`] per event and encoding
//! it was most of an append's client work beyond the publish itself.
//! Structured mode still goes through an envelope and the codec, and a test
//! holds both paths to the same headers.

use async_nats::header::{HeaderValue, NATS_MESSAGE_ID};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::codec::binary::{
    attribute_value, CE_CAUSATIONID, CE_CORRELATIONID, CE_DATACONTENTTYPE, CE_ID, CE_PARTITIONKEY,
    CE_SOURCE, CE_SPECVERSION, CE_TIME, CE_TYPE,
};
use crate::codec::{self, EncodeError, Encoding};
use crate::envelope::{Envelope, CAUSATION_ID, CORRELATION_ID, PARTITION_KEY};
use crate::trace::TraceHeaders;

/// What every event of one append carries alike.
pub(super) struct AppendAttributes<'a> {
    pub(super) source: &'a str,
    pub(super) key: &'a str,
    pub(super) encoding: Encoding,
    /// The events of one append happen at once.
    pub(super) time: DateTime<Utc>,
    /// The handled event's id and correlation id, when a handler appends.
    pub(super) lineage: Option<(String, String)>,
    pub(super) trace: Option<TraceHeaders>,
}

impl<'a> AppendAttributes<'a> {
    /// The attributes of an append made now, on this task (its handled
    /// event and its span).
    pub(super) fn current(source: &'a str, key: &'a str, encoding: Encoding) -> Self {
        AppendAttributes {
            source,
            key,
            encoding,
            time: Utc::now(),
            lineage: crate::lineage::handled(|lineage| {
                (
                    lineage.event_id().to_owned(),
                    lineage.correlation_id().to_owned(),
                )
            }),
            trace: TraceHeaders::of(&crate::trace::current_context()),
        }
    }
}

/// One event of an append, before encoding.
pub(super) struct EventParts<'e> {
    pub(super) id: &'e str,
    pub(super) event_type: &'e str,
    pub(super) data: Option<Bytes>,
}

/// Encodes the events of one append, in order, once per attempt.
pub(super) struct AppendEncoder<'a> {
    attributes: AppendAttributes<'a>,
    /// Binary mode: the headers every event starts from, checked, until the
    /// last event of an attempt takes them (a next attempt writes them
    /// again).
    shared: Option<HeaderMap>,
}

impl<'a> AppendEncoder<'a> {
    /// Checks the shared attributes: an invalid source or key is refused
    /// before anything is sent.
    pub(super) fn new(attributes: AppendAttributes<'a>) -> Result<Self, EncodeError> {
        let shared = match attributes.encoding {
            Encoding::Binary => Some(shared_headers(&attributes)?),
            Encoding::Structured => None,
        };
        Ok(AppendEncoder { attributes, shared })
    }

    /// The headers (with `Nats-Msg-Id`) and payload of `event`; `last` when
    /// no event of this attempt follows it, which takes the shared headers
    /// instead of copying them.
    pub(super) fn encode(
        &mut self,
        event: EventParts<'_>,
        last: bool,
    ) -> Result<(HeaderMap, Bytes), EncodeError> {
        if self.attributes.encoding == Encoding::Structured {
            return enveloped(&self.attributes, event);
        }
        // Checked first, as the envelope's validation does.
        let id = attribute_value("id", event.id, true)?;
        let shared = match self.shared.take() {
            Some(shared) => shared,
            None => shared_headers(&self.attributes)?,
        };
        let mut headers = if last {
            shared
        } else {
            let copy = shared.clone();
            self.shared = Some(shared);
            copy
        };
        headers.insert(CE_TYPE, attribute_value("type", event.event_type, true)?);
        headers.insert(CE_ID, id);
        headers.insert(NATS_MESSAGE_ID, event.id);
        headers.insert(
            CE_TIME,
            HeaderValue::from(codec::format_time(&self.attributes.time)),
        );
        if event.data.is_some() {
            headers.insert(CE_DATACONTENTTYPE, codec::APPLICATION_JSON);
        }
        Ok((headers, event.data.unwrap_or_default()))
    }
}

/// The binary-mode headers of the attributes all events of an append share.
fn shared_headers(attributes: &AppendAttributes<'_>) -> Result<HeaderMap, EncodeError> {
    let mut headers = HeaderMap::new();
    headers.insert(CE_SPECVERSION, codec::SPEC_VERSION);
    headers.insert(
        CE_SOURCE,
        attribute_value("source", attributes.source, true)?,
    );
    // Extensions in the codec's (alphabetical) order, so an invalid value
    // is reported as the envelope path reports it.
    if let Some((causation, correlation)) = &attributes.lineage {
        headers.insert(
            CE_CAUSATIONID,
            attribute_value(CAUSATION_ID, causation, false)?,
        );
        headers.insert(
            CE_CORRELATIONID,
            attribute_value(CORRELATION_ID, correlation, false)?,
        );
    }
    headers.insert(
        CE_PARTITIONKEY,
        attribute_value(PARTITION_KEY, attributes.key, false)?,
    );
    if let Some(trace) = &attributes.trace {
        trace.insert_into(&mut headers)?;
    }
    Ok(headers)
}

/// `event` as an envelope, encoded by the codec.
fn enveloped(
    attributes: &AppendAttributes<'_>,
    event: EventParts<'_>,
) -> Result<(HeaderMap, Bytes), EncodeError> {
    let mut envelope = Envelope::new(attributes.source, event.event_type);
    event.id.clone_into(&mut envelope.id);
    envelope.time = Some(attributes.time);
    if event.data.is_some() {
        envelope.data_content_type = Some(codec::APPLICATION_JSON.to_owned());
    }
    envelope.data = event.data;
    envelope.set_partition_key(attributes.key);
    if let Some((causation, correlation)) = &attributes.lineage {
        envelope.set_causation_id(causation.as_str());
        envelope.set_correlation_id(correlation.as_str());
    }
    if let Some(trace) = attributes.trace.clone() {
        trace.write_into(&mut envelope);
    }
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, event.id);
    let payload = codec::encode_into(&envelope, attributes.encoding, &mut headers)?;
    Ok((headers, payload))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::TraceContextExt;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Header names (lower case) and values, in a comparable order.
    type Comparable = BTreeMap<String, Vec<String>>;

    fn comparable(headers: &HeaderMap) -> Comparable {
        let name = |name: &async_nats::header::HeaderName| name.to_string().to_ascii_lowercase();
        let values = |values: &Vec<HeaderValue>| values.iter().map(ToString::to_string).collect();
        headers
            .iter()
            .map(|(header, all)| (name(header), values(all)))
            .collect()
    }

    fn trace(state: &str) -> TraceHeaders {
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let span = crate::trace::parse_traceparent(traceparent, Some(state)).unwrap();
        TraceHeaders::of(&opentelemetry::Context::new().with_remote_span_context(span)).unwrap()
    }

    type Encoded = Result<Vec<(Comparable, Bytes)>, codec::EncodeErrorKind>;

    /// Two events of one append, written directly and through envelopes.
    fn both_ways(
        source: &str,
        key: &str,
        lineage: Option<(String, String)>,
        trace: Option<TraceHeaders>,
    ) -> (Encoded, Encoded) {
        let attributes = || AppendAttributes {
            source,
            key,
            encoding: Encoding::Binary,
            time: Utc::now(),
            lineage: lineage.clone(),
            trace: trace.clone(),
        };
        let events = || {
            [
                (
                    "0b1c7c4e-5f0a-5d43-9d5e-0c6f1b0e8a11",
                    Some(Bytes::from("{}")),
                ),
                ("1c2d8d5f-6a1b-5e54-8e6f-1d7a2c1f9b22", None),
            ]
            .into_iter()
            .map(|(id, data)| EventParts {
                id,
                event_type: "shop.cart.added.v1",
                data,
            })
        };
        let direct_attributes = attributes();
        let time = direct_attributes.time;
        let direct = AppendEncoder::new(direct_attributes).and_then(|mut encoder| {
            events()
                .enumerate()
                .map(|(index, event)| encoder.encode(event, index == 1))
                .collect::<Result<Vec<_>, _>>()
        });
        let through_envelopes = events()
            .map(|event| {
                enveloped(
                    &AppendAttributes {
                        time,
                        ..attributes()
                    },
                    event,
                )
            })
            .collect::<Result<Vec<_>, _>>();
        let both = |encoded: Result<Vec<(HeaderMap, Bytes)>, EncodeError>| {
            encoded
                .map(|events| {
                    events
                        .iter()
                        .map(|(headers, payload)| (comparable(headers), payload.clone()))
                        .collect()
                })
                .map_err(|err| err.kind().clone())
        };
        (both(direct), both(through_envelopes))
    }

    #[test]
    fn direct_headers_are_the_envelope_headers() {
        let lineage = Some(("cause 1".to_owned(), "flow".to_owned()));
        for (source, key, lineage, trace) in [
            ("/shop", "cart-1", None, None),
            (
                "/shop service",
                "caf\u{e9} 1",
                lineage,
                Some(trace("vendor=1")),
            ),
            ("", "cart-1", None, None),
            ("/shop", "a\nb", None, None),
        ] {
            let (direct, enveloped) = both_ways(source, key, lineage, trace);
            assert_eq!(direct, enveloped);
            if let Ok(events) = direct {
                for name in ["nats-msg-id", "ce-id", "ce-partitionkey", "ce-time"] {
                    assert!(events[1].0.contains_key(name), "{name}");
                }
            }
        }
    }

    #[test]
    fn every_attempt_writes_the_same_messages() {
        let mut encoder = AppendEncoder::new(AppendAttributes {
            source: "/shop",
            key: "cart-1",
            encoding: Encoding::Binary,
            time: Utc::now(),
            lineage: Some(("cause".into(), "flow".into())),
            trace: Some(trace("a=1")),
        })
        .unwrap();
        let mut attempt = || {
            ["a", "b"]
                .into_iter()
                .enumerate()
                .map(|(index, id)| {
                    let event = EventParts {
                        id,
                        event_type: "shop.cart.added.v1",
                        data: Some(Bytes::from("{}")),
                    };
                    comparable(&encoder.encode(event, index == 1).unwrap().0)
                })
                .collect::<Vec<_>>()
        };
        let first = attempt();
        assert_eq!(first[1].len(), 12, "{first:?}");
        assert_eq!(attempt(), first);
    }

    proptest! {
        #[test]
        fn any_append_encodes_as_its_envelopes(
            source in any::<String>(),
            key in any::<String>(),
            lineage in proptest::option::of(any::<(String, String)>()),
            traced in any::<bool>(),
        ) {
            let trace = traced.then(|| trace("a=1,b=2"));
            let (direct, enveloped) = both_ways(&source, &key, lineage, trace);
            prop_assert_eq!(direct, enveloped);
        }
    }
}
