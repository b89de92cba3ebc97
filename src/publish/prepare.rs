//! Preparing an event to send: its id, subject and lineage, its publish
//! span and trace context, its encoding, and the size checks that fail
//! before anything is sent.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use opentelemetry::StringValue;
use serde::Serialize;

use super::outgoing::{self, KeyAndData, Outgoing, TypedEvent};
use super::shared_headers::SharedHeaders;
use super::{PublishError, PublishErrorKind, PublishOptions, Publisher};
use crate::codec::{self, EncodeError, EncodeErrorKind, Encoding};
use crate::envelope::Envelope;
use crate::event::{Event, EventType};
use crate::lineage;
use crate::span_fields::{publish_span, PublishedEvent};
use crate::transport::message_buffer::MessageBuffer;

/// JetStream stores a header block of at most this many bytes (its length
/// is kept in 16 bits).
const MAX_JETSTREAM_HEADER_BYTES: usize = 65_535;

/// An event encoded and ready to send, kept until it settles.
pub(super) struct Prepared<'a> {
    pub(super) subject: String,
    pub(super) outgoing: Outgoing<'a>,
    /// The `cloudevents.event_type` metric attribute: a typed event's static
    /// type, so recording it allocates nothing.
    pub(super) metric_type: StringValue,
    /// The headers and payload of the first attempt, moved into it. A retry
    /// encodes them again from `outgoing` (same bytes): cheaper than cloning
    /// them for every attempt when almost every publish has only one.
    pub(super) first_attempt: Option<(HeaderMap, Bytes)>,
    pub(super) wire_size: usize,
    pub(super) started: Instant,
    pub(super) expected_last_subject_sequence: Option<u64>,
    pub(super) span: tracing::Span,
    /// The data goes to the claim check's bucket before the first attempt
    /// ([`Publisher::store_claim`]); nothing is encoded yet.
    pub(super) claim_pending: bool,
}

/// What the events of one `publish_many` or `ingest` call share, made once
/// for them all.
pub(super) struct OneType {
    event_type: Result<EventType, PublishError>,
    /// `None` when a value is invalid: each event's encoding says which.
    headers: Option<SharedHeaders>,
    /// The events' JSON, written one after another into shared buffers.
    /// Locked by one event at a time (the events are prepared in turn);
    /// a mutex only so that the caller's future stays `Send`.
    payloads: Mutex<MessageBuffer>,
}

impl OneType {
    pub(super) fn of<E: Event>(publisher: &Publisher) -> OneType {
        OneType {
            event_type: event_type_of::<E>(),
            headers: SharedHeaders::new(
                &publisher.client.config().source,
                E::TYPE,
                E::data_schema(),
            )
            .ok(),
            payloads: Mutex::new(MessageBuffer::for_payloads()),
        }
    }

    /// `event`'s JSON, in the shared buffer.
    fn json(&self, event: &impl Serialize) -> Result<Bytes, serde_json::Error> {
        // Nothing panics while the buffer is borrowed but serde, whose
        // partial write `json` discards: a poisoned lock is still usable.
        self.payloads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .json(event)
    }
}

impl Publisher {
    /// Prepares a typed event: without an envelope in binary mode when no
    /// free-form metadata is asked for (see [`outgoing`]), through one
    /// otherwise. `one_type`: what events of its type share, when made
    /// already.
    pub(super) fn prepare_event<'a, E: Event>(
        &self,
        event_type: &EventType,
        one_type: Option<&OneType>,
        event: &'a E,
        options: &'a PublishOptions,
    ) -> Result<Prepared<'a>, PublishError> {
        // Asked before anything can fail, so a failure takes an ordinal in
        // every run alike.
        let chosen_id = match &options.id {
            Some(id) => Some(id.clone()),
            None => lineage::next_follow_up_id(E::TYPE),
        };
        let encoding = options.encoding.unwrap_or(self.client.config().encoding);
        if encoding != Encoding::Binary
            || !options.metadata.is_empty()
            || self.encrypts(E::TYPE)
            || self.claim_check.is_some()
        {
            let (subject, mut envelope) =
                self.envelope_for(event_type, event, options)
                    .map_err(|err| match &chosen_id {
                        Some(id) => err.for_event(id),
                        None => err,
                    })?;
            if let Some(id) = chosen_id {
                envelope.id = id;
            }
            let outgoing = Outgoing::Envelope { envelope, encoding };
            return self.prepare(subject, outgoing, options, StringValue::from(E::TYPE), None);
        }
        let typed = TypedEvent {
            event,
            key_option: options.key.as_deref(),
            id: chosen_id.unwrap_or_else(crate::envelope::new_id),
            event_type: E::TYPE,
            data_schema: E::data_schema(),
            time: chrono::Utc::now(),
            correlation_id: None,
            causation_id: None,
            trace: None,
        };
        let key = typed.key();
        let subject = self
            .subject_for(event_type, key.as_deref())
            .map_err(|err| err.for_event(&typed.id))?;
        let data = match one_type {
            Some(one_type) => one_type
                .json(event)
                .map_err(|err| EncodeError::with_source(EncodeErrorKind::Serialize, err)),
            None => outgoing::Serialized::json(event).map(Bytes::from),
        }
        .map_err(|err| {
            PublishError::with_source(PublishErrorKind::InvalidEvent, err).for_event(&typed.id)
        })?;
        let first = KeyAndData {
            key,
            data,
            shared: one_type.and_then(|one_type| one_type.headers.as_ref()),
        };
        let outgoing = Outgoing::Typed(typed);
        self.prepare(
            subject,
            outgoing,
            options,
            StringValue::from(E::TYPE),
            Some(first),
        )
    }

    /// Prepares one event of many of one type (`one_type`, made once for
    /// them all) up to sending: keys loaded, encoded, claim stored.
    pub(super) async fn prepare_one_of_many<'a, E: Event>(
        &self,
        one_type: &OneType,
        event: &'a E,
        options: &'a PublishOptions,
    ) -> Result<Prepared<'a>, PublishError> {
        #[cfg(feature = "encryption")]
        self.load_keys(E::TYPE, event.key().as_deref()).await?;
        let mut prepared = match &one_type.event_type {
            Ok(event_type) => self.prepare_event(event_type, Some(one_type), event, options),
            // The error again, with this event's id.
            Err(_) => event_type_of::<E>().and_then(|event_type| {
                self.prepare_event(&event_type, Some(one_type), event, options)
            }),
        }?;
        self.store_claim(&mut prepared).await?;
        Ok(prepared)
    }

    /// Whether events of `event_type` are encrypted, so sent through an
    /// envelope (as are all of a publisher with a claim check).
    fn encrypts(&self, _event_type: &str) -> bool {
        #[cfg(feature = "encryption")]
        if let Some(encryption) = &self.encryption {
            return encryption.applies_to(_event_type);
        }
        false
    }

    /// Loads the aggregate data key an event of `event_type` with
    /// `partition_key` is encrypted with, before it is prepared.
    #[cfg(feature = "encryption")]
    pub(super) async fn load_keys(
        &self,
        event_type: &str,
        partition_key: Option<&str>,
    ) -> Result<(), PublishError> {
        if let Some(encryption) = &self.encryption {
            encryption
                .load(event_type, partition_key)
                .await
                .map_err(|err| PublishError::with_source(PublishErrorKind::Encryption, err))?;
        }
        Ok(())
    }

    /// Encrypts an envelope's data when this publisher encrypts its type.
    #[cfg(feature = "encryption")]
    fn seal(&self, outgoing: &mut Outgoing<'_>) -> Result<(), PublishError> {
        if let (Some(encryption), Outgoing::Envelope { envelope, .. }) =
            (&self.encryption, outgoing)
        {
            if encryption.applies_to(&envelope.event_type) {
                encryption.seal(envelope).map_err(|err| {
                    PublishError::with_source(PublishErrorKind::Encryption, err)
                        .for_event(&envelope.id)
                })?;
            }
        }
        Ok(())
    }

    /// The subject of an event of `event_type` with `key`.
    fn subject_for(
        &self,
        event_type: &EventType,
        key: Option<&str>,
    ) -> Result<String, PublishError> {
        self.client
            .subjects()
            .event(event_type, key)
            .map_err(|err| PublishError::with_source(PublishErrorKind::InvalidSubject, err))
    }

    /// Builds the subject and envelope of a typed event.
    fn envelope_for<E: Event>(
        &self,
        event_type: &EventType,
        event: &E,
        options: &PublishOptions,
    ) -> Result<(String, Envelope), PublishError> {
        // The option overrides the event's own key, for the subject and the
        // `partitionkey` alike.
        let key = match &options.key {
            Some(key) => Some(key.clone()),
            None => event.key(),
        };
        let subject = self.subject_for(event_type, key.as_deref())?;
        let envelope =
            Envelope::from_event_with_key(self.client.config().source.clone(), event, key)
                .map_err(|err| PublishError::with_source(PublishErrorKind::InvalidEvent, err))?;
        Ok((subject, envelope))
    }

    /// Fills lineage, metadata and trace context, encodes, checks the size.
    /// `typed`: a typed event's key and JSON, already made for its subject
    /// and size.
    pub(super) fn prepare<'a>(
        &self,
        subject: String,
        mut outgoing: Outgoing<'a>,
        options: &PublishOptions,
        metric_type: StringValue,
        typed: Option<KeyAndData<'_>>,
    ) -> Result<Prepared<'a>, PublishError> {
        let causation_id = match &options.causation_id {
            Some(id) => Some(id.clone()),
            None => lineage::handled(|lineage| lineage.event_id().to_owned()),
        };
        if let Some(id) = causation_id {
            outgoing.set_causation_id(id);
        }
        let correlation_id = match &options.correlation_id {
            Some(id) => Some(id.clone()),
            None => lineage::handled(|lineage| lineage.correlation_id().to_owned()),
        };
        if let Some(id) = correlation_id {
            outgoing.set_correlation_id(id);
        }
        // `prepare_event` sends events with metadata through an envelope.
        if let Outgoing::Envelope { envelope, .. } = &mut outgoing {
            for (name, value) in &options.metadata {
                envelope
                    .set_extension(name, value.as_str())
                    .map_err(|err| {
                        PublishError::with_source(PublishErrorKind::InvalidEvent, err)
                            .for_event(&envelope.id)
                    })?;
            }
        }
        let source = self.client.config().source.as_str();

        let span = publish_span(PublishedEvent {
            subject: &subject,
            id: outgoing.event_id(),
            event_type: outgoing.event_type(),
            source: outgoing.source(source),
            correlation_id: outgoing.correlation_id(),
        });
        // The trace context sent is the publish span's own, so a consumer's
        // process span becomes its child.
        let context = if span.is_disabled() {
            crate::trace::current_context()
        } else {
            crate::trace::context_of(&span)
        };
        if let Some(trace) = crate::trace::TraceHeaders::of(&context) {
            outgoing.set_trace(trace);
        }

        #[cfg(feature = "encryption")]
        self.seal(&mut outgoing)?;
        let (headers, payload) = outgoing
            .encode(source, options.expected_last_subject_sequence, typed)
            .map_err(|err| {
                PublishError::with_source(PublishErrorKind::InvalidEvent, err)
                    .for_event(outgoing.event_id())
            })?;
        let wire_size = codec::wire_size(&headers, payload.len());
        let claim_pending = self.claims(&outgoing, wire_size);
        if !claim_pending {
            self.check_size(&outgoing, wire_size, wire_size - payload.len())?;
        }
        Ok(Prepared {
            subject,
            outgoing,
            metric_type,
            first_attempt: (!claim_pending).then_some((headers, payload)),
            wire_size,
            started: Instant::now(),
            expected_last_subject_sequence: options.expected_last_subject_sequence,
            span,
            claim_pending,
        })
    }

    /// Whether the data of `outgoing`, in a message of `wire_size` bytes,
    /// goes to the claim check's bucket.
    fn claims(&self, outgoing: &Outgoing<'_>, wire_size: usize) -> bool {
        let (Some(claim_check), Outgoing::Envelope { envelope, .. }) =
            (&self.claim_check, outgoing)
        else {
            return false;
        };
        let data_len = envelope.data.as_ref().map_or(0, Bytes::len);
        data_len > 0
            && claim_check.applies(data_len, wire_size, self.client.transport().max_payload())
    }

    /// Fails an event the server would refuse for its size.
    fn check_size(
        &self,
        outgoing: &Outgoing<'_>,
        wire_size: usize,
        header_size: usize,
    ) -> Result<(), PublishError> {
        let limit = self.client.transport().max_payload();
        if wire_size > limit {
            return Err(PublishError::new(PublishErrorKind::PayloadTooLarge {
                size: wire_size,
                limit,
            })
            .for_event(outgoing.event_id()));
        }
        if header_size > MAX_JETSTREAM_HEADER_BYTES {
            // The server would refuse it only after the round trip (error
            // 10097), as a bare rejection.
            return Err(PublishError::new(PublishErrorKind::HeadersTooLarge {
                size: header_size,
                limit: MAX_JETSTREAM_HEADER_BYTES,
            })
            .for_event(outgoing.event_id()));
        }
        Ok(())
    }

    /// Moves a prepared event's data to the claim check's bucket when
    /// [`prepare`](Self::prepare) found it too large, then encodes it.
    pub(super) async fn store_claim(
        &self,
        prepared: &mut Prepared<'_>,
    ) -> Result<(), PublishError> {
        let (Some(claim_check), true) = (&self.claim_check, prepared.claim_pending) else {
            return Ok(());
        };
        if let Outgoing::Envelope { envelope, .. } = &mut prepared.outgoing {
            claim_check.store(envelope).await.map_err(|err| {
                PublishError::with_source(PublishErrorKind::ClaimCheck, err).for_event(&envelope.id)
            })?;
        }
        let source = self.client.config().source.as_str();
        let (headers, payload) = prepared
            .outgoing
            .encode(source, prepared.expected_last_subject_sequence, None)
            .map_err(|err| {
                PublishError::with_source(PublishErrorKind::InvalidEvent, err)
                    .for_event(prepared.outgoing.event_id())
            })?;
        let wire_size = codec::wire_size(&headers, payload.len());
        self.check_size(&prepared.outgoing, wire_size, wire_size - payload.len())?;
        prepared.first_attempt = Some((headers, payload));
        prepared.wire_size = wire_size;
        prepared.claim_pending = false;
        // The ack deadline counts from sending, not from the upload.
        prepared.started = Instant::now();
        Ok(())
    }
}

/// The type of `E`, parsed.
pub(super) fn event_type_of<E: Event>() -> Result<EventType, PublishError> {
    EventType::of::<E>()
        .map_err(|err| PublishError::with_source(PublishErrorKind::InvalidSubject, err))
}
