//! Publishing typed events and knowing whether JetStream stored them.
//!
//! Every publish awaits the server's PubAck. The event id is sent as
//! `Nats-Msg-Id`, so a retried publish is stored once within the stream's
//! duplicate window; retries after an ack timeout or a 503 (no stream leader
//! during an election) reuse it. When the retry budget runs out after a timeout
//! the error is [`PublishErrorKind::OutcomeUnknown`]: the event may or may not
//! be stored, and publishing it again with the same id is safe: the error's
//! [`event_id`](PublishError::event_id), passed to [`PublishOptions::id`].
//!
//! Events published while a handler runs get ids derived from the handled
//! event, so a handler run again after a failure publishes its follow-ups
//! under the same ids and they are stored once: see [`Lineage`].

use std::collections::VecDeque;
use std::future::Future;
use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use opentelemetry::StringValue;
use tokio::sync::broadcast;
use tracing::Instrument;

mod error;
mod lineage;
mod outgoing;

pub use error::{PublishError, PublishErrorKind};
pub use lineage::{with_lineage, Lineage};

use crate::client::{Client, Operation, PermissionViolation};
use crate::codec::{self, Encoding};
use crate::envelope::Envelope;
use crate::event::{Event, EventType};
use crate::transport::{PendingStore, StoreFailure, StoreFailureKind, Stored, StreamLookup};
use error::error_type;
use outgoing::{KeyAndData, Outgoing, TypedEvent};

/// What the server said about a stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The event's id (also its `Nats-Msg-Id`).
    pub event_id: String,
    /// The subject it was published on.
    pub subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// The server had this id already (within the duplicate window) and did
    /// not store it again: an earlier attempt succeeded.
    pub duplicate: bool,
}

/// Options of one publish, as a small builder.
///
/// ```
/// use jetevents::publish::PublishOptions;
/// use jetevents::codec::Encoding;
///
/// let options = PublishOptions::new()
///     .id("order-42-paid")
///     .correlation_id("order-42")
///     .metadata("tenant", "acme")
///     .encoding(Encoding::Structured)
///     .expected_last_subject_sequence(7);
/// ```
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    id: Option<String>,
    key: Option<String>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    metadata: Vec<(String, String)>,
    encoding: Option<Encoding>,
    expected_last_subject_sequence: Option<u64>,
}

impl PublishOptions {
    /// No options: the defaults of the client's configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the event's id (also its `Nats-Msg-Id`) instead of a new UUIDv7
    /// or a derived follow-up id: the server stores one event per id within
    /// the stream's duplicate window. Use it to publish again after
    /// [`OutcomeUnknown`](PublishErrorKind::OutcomeUnknown), with the
    /// error's [`event_id`](PublishError::event_id), or to key an event by a
    /// business id. It must be non-empty and free of control characters,
    /// otherwise the publish fails with [`PublishErrorKind::InvalidEvent`]
    /// and nothing is sent. For [`Publisher::publish_envelope`] it replaces
    /// the envelope's id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Overrides the event's own key (last subject token, `partitionkey`).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the `correlationid` extension (the conversation this event is part of).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the `causationid` extension (the id of the event that caused this one).
    pub fn causation_id(mut self, id: impl Into<String>) -> Self {
        self.causation_id = Some(id.into());
        self
    }

    /// Adds a free-form metadata extension. Names are CloudEvents extension
    /// names: lower-case letters and digits.
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    /// Chooses binary (default) or structured encoding for this event.
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = Some(encoding);
        self
    }

    /// Optimistic concurrency: store only if the last event on this subject has
    /// this stream sequence (0: the subject must be empty).
    pub fn expected_last_subject_sequence(mut self, sequence: u64) -> Self {
        self.expected_last_subject_sequence = Some(sequence);
        self
    }
}

/// Publishes events of one service. Cheap to clone.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)]
/// # struct AppointmentConfirmed { appointment_id: String }
/// # impl jetevents::Event for AppointmentConfirmed {
/// #     const TYPE: &'static str = "booking.appointment.confirmed.v1";
/// #     fn key(&self) -> Option<String> { Some(self.appointment_id.clone()) }
/// # }
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = client.publisher();
/// let receipt = publisher
///     .publish(&AppointmentConfirmed { appointment_id: "a-1".into() })
///     .await?;
/// println!("stored as {} #{}", receipt.stream, receipt.sequence);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Publisher {
    client: Client,
}

/// JetStream stores a header block of at most this many bytes (its length
/// is kept in 16 bits).
const MAX_JETSTREAM_HEADER_BYTES: usize = 65_535;

/// An event encoded and ready to send, kept until it settles.
struct Prepared<'a> {
    subject: String,
    outgoing: Outgoing<'a>,
    /// The `cloudevents.event_type` metric attribute: a typed event's static
    /// type, so recording it allocates nothing.
    metric_type: StringValue,
    /// The headers and payload of the first attempt, moved into it. A retry
    /// encodes them again from `outgoing` (same bytes): cheaper than cloning
    /// them for every attempt when almost every publish has only one.
    first_attempt: Option<(HeaderMap, Bytes)>,
    wire_size: usize,
    started: Instant,
    expected_last_subject_sequence: Option<u64>,
    span: tracing::Span,
}

/// The state of one `publish_many` call.
struct Pipeline<'a> {
    /// One slot per input event, filled as results come in.
    results: Vec<Option<Result<Receipt, PublishError>>>,
    /// Events to try again, one by one, once the pipeline is empty.
    retry_later: Vec<(usize, Prepared<'a>)>,
    /// Sent events awaiting their ack, oldest first.
    in_flight: VecDeque<(usize, Prepared<'a>, PendingStore)>,
    violations: broadcast::Receiver<PermissionViolation>,
    /// The ack deadline of the oldest event in flight. One timer for the
    /// whole pipeline, moved forward for each ack: deadlines only grow, and
    /// moving a timer forward does not touch the runtime's timer wheel,
    /// where a timer per ack would register and deregister every time.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

enum AttemptError {
    /// Worth another attempt with the same id.
    Retryable {
        timed_out: bool,
        source: StoreFailure,
    },
    /// Final.
    Final(PublishError),
}

impl Publisher {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client this publisher uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Publishes `event` and awaits the server's ack.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Receipt, PublishError> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes `event` with `options` and awaits the server's ack.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Receipt, PublishError> {
        let event_type = event_type_of::<E>()?;
        let prepared = self.prepare_event(&event_type, event, &options)?;
        let span = prepared.span.clone();
        self.send_with_retries(prepared).instrument(span).await
    }

    /// Publishes a ready envelope on `subject` (for events that are not Rust
    /// types here: relays, redrives, tests). It keeps the envelope's id, also
    /// inside a handler (no derived follow-up id), unless `options` set one.
    pub async fn publish_envelope(
        &self,
        subject: &str,
        mut envelope: Envelope,
        options: PublishOptions,
    ) -> Result<Receipt, PublishError> {
        if let Some(id) = &options.id {
            envelope.id.clone_from(id);
        }
        let metric_type = StringValue::from(envelope.event_type.clone());
        let encoding = options.encoding.unwrap_or(self.client.config().encoding);
        let outgoing = Outgoing::Envelope { envelope, encoding };
        let prepared = self.prepare(subject.to_owned(), outgoing, &options, metric_type, None)?;
        let span = prepared.span.clone();
        self.send_with_retries(prepared).instrument(span).await
    }

    /// Records the outcome of one event in the metrics.
    fn record(&self, prepared: &Prepared<'_>, error: Option<&PublishError>) {
        let metrics = self.client.metrics();
        let error_type = error.map(|err| error_type(err.kind()));
        if let (Some(error_type), Some(err)) = (error_type, error) {
            prepared.span.record("error.type", error_type);
            if !prepared.span.is_disabled() {
                prepared
                    .span
                    .record("otel.status_description", err.to_string().as_str());
            }
        }
        let attributes =
            crate::metrics::publish_attributes(prepared.metric_type.clone(), error_type);
        metrics.sent.add(1, attributes.as_slice());
        metrics.operation_duration.record(
            prepared.started.elapsed().as_secs_f64(),
            attributes.as_slice(),
        );
    }

    /// Publishes many events pipelined: up to `window` acks are awaited at
    /// once, and sending waits (backpressure) while the window is full.
    /// Returns one result per event, in input order.
    ///
    /// Without faults the events are stored in input order. An event whose
    /// attempt timed out or met no stream leader is retried (same id) after the
    /// events already in flight, so under faults each event is still stored
    /// once, but a retried one may land after later ones.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # struct Tick { n: u64 }
    /// # impl jetevents::Event for Tick { const TYPE: &'static str = "demo.clock.ticked.v1"; }
    /// # async fn run(publisher: jetevents::publish::Publisher) {
    /// let ticks: Vec<Tick> = (0..10_000).map(|n| Tick { n }).collect();
    /// let results = publisher.publish_many(&ticks, 256).await;
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// # }
    /// ```
    pub async fn publish_many<E: Event>(
        &self,
        events: &[E],
        window: usize,
    ) -> Vec<Result<Receipt, PublishError>> {
        let window = window.clamp(1, crate::client::MAX_ACKS_IN_FLIGHT);
        let mut results: Vec<Option<Result<Receipt, PublishError>>> =
            Vec::with_capacity(events.len());
        results.resize_with(events.len(), || None);
        let options = PublishOptions::default();
        // The type is the same for every event: parsed once.
        let event_type = event_type_of::<E>();
        let mut pipeline = Pipeline {
            results,
            retry_later: Vec::new(),
            in_flight: VecDeque::with_capacity(window),
            violations: self.client.permission_violations(),
            deadline: Box::pin(tokio::time::sleep(self.client.config().ack_timeout)),
        };

        for (index, event) in events.iter().enumerate() {
            if pipeline.in_flight.len() >= window {
                self.settle_oldest(&mut pipeline).await;
            }
            let prepared = match &event_type {
                Ok(event_type) => self.prepare_event(event_type, event, &options),
                Err(_) => event_type_of::<E>()
                    .and_then(|event_type| self.prepare_event(&event_type, event, &options)),
            };
            let mut prepared = match prepared {
                Ok(prepared) => prepared,
                Err(err) => {
                    pipeline.results[index] = Some(Err(err));
                    continue;
                }
            };
            match self.send(&mut prepared).await {
                Ok(ack) => {
                    self.client.metrics().publish_window.add(1, &[]);
                    pipeline.in_flight.push_back((index, prepared, ack));
                }
                Err(AttemptError::Final(err)) => {
                    self.record(&prepared, Some(&err));
                    pipeline.results[index] = Some(settled(prepared, Err(err)));
                }
                Err(AttemptError::Retryable { .. }) => pipeline.retry_later.push((index, prepared)),
            }
        }
        while !pipeline.in_flight.is_empty() {
            self.settle_oldest(&mut pipeline).await;
        }
        let Pipeline {
            mut results,
            retry_later,
            ..
        } = pipeline;
        for (index, prepared) in retry_later {
            let span = prepared.span.clone();
            results[index] = Some(self.send_with_retries(prepared).instrument(span).await);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(PublishError::new(PublishErrorKind::OutcomeUnknown {
                        attempts: 0,
                    }))
                })
            })
            .collect()
    }

    /// Awaits the oldest ack in flight and files its result.
    async fn settle_oldest(&self, pipeline: &mut Pipeline<'_>) {
        let Some((index, prepared, ack)) = pipeline.in_flight.pop_front() else {
            return;
        };
        // async-nats starts an ack's timer when the ack is first awaited, and
        // the window awaits its acks one after another: after a server crash
        // that would add up to window x ack timeout. Count from the send.
        let due =
            tokio::time::Instant::from_std(prepared.started) + self.client.config().ack_timeout;
        let timed = {
            let awaited = self.await_ack(&prepared, ack, &mut pipeline.violations);
            let mut awaited = std::pin::pin!(awaited);
            // When the ack has arrived already, the timer is not touched.
            let ready = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match awaited.as_mut().poll(cx) {
                    std::task::Poll::Ready(outcome) => Some(outcome),
                    std::task::Poll::Pending => None,
                })
            })
            .await;
            match ready {
                Some(outcome) => Some(outcome),
                None => {
                    pipeline.deadline.as_mut().reset(due);
                    tokio::select! {
                        biased;
                        outcome = awaited => Some(outcome),
                        () = pipeline.deadline.as_mut() => None,
                    }
                }
            }
        };
        let outcome = match timed {
            Some(outcome) => outcome,
            None => Err(AttemptError::Retryable {
                timed_out: true,
                source: StoreFailure {
                    kind: StoreFailureKind::TimedOut,
                    source: "no ack within the ack timeout".into(),
                },
            }),
        };
        self.client.metrics().publish_window.add(-1, &[]);
        let result = match outcome {
            Ok(ack) => Ok(ack),
            Err(AttemptError::Final(err)) => Err(err),
            Err(AttemptError::Retryable { .. }) => {
                // Settled (and recorded) by the retry after the pipeline.
                pipeline.retry_later.push((index, prepared));
                return;
            }
        };
        self.record(&prepared, result.as_ref().err());
        pipeline.results[index] = Some(settled(prepared, result));
    }

    /// Prepares a typed event: without an envelope in binary mode when no
    /// free-form metadata is asked for (see [`outgoing`]), through one
    /// otherwise.
    fn prepare_event<'a, E: Event>(
        &self,
        event_type: &EventType,
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
        if encoding != Encoding::Binary || !options.metadata.is_empty() {
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
        let data = outgoing::Serialized::json(event).map_err(|err| {
            PublishError::with_source(PublishErrorKind::InvalidEvent, err).for_event(&typed.id)
        })?;
        let first = KeyAndData {
            key,
            data: Bytes::from(data),
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
    fn prepare<'a>(
        &self,
        subject: String,
        mut outgoing: Outgoing<'a>,
        options: &PublishOptions,
        metric_type: StringValue,
        typed: Option<KeyAndData>,
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

        let span = tracing::info_span!(
            "publish",
            otel.name = %format_args!("publish {}", crate::subject::destination_template(&subject)),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %subject,
            messaging.destination.template = %crate::subject::destination_template(&subject),
            messaging.message.id = outgoing.event_id(),
            messaging.message.conversation_id = outgoing.correlation_id(),
            cloudevents.event_id = outgoing.event_id(),
            cloudevents.event_type = outgoing.event_type(),
            cloudevents.event_source = outgoing.source(source),
            cloudevents.event_spec_version = "1.0",
            messaging.nats.stream.sequence = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        // The trace context sent is the publish span's own, so a consumer's
        // process span becomes its child.
        let context = if span.is_disabled() {
            crate::trace::current_context()
        } else {
            let _entered = span.enter();
            crate::trace::current_context()
        };
        if let Some(trace) = crate::trace::TraceHeaders::of(&context) {
            outgoing.set_trace(trace);
        }

        let (headers, payload) = outgoing
            .encode(source, options.expected_last_subject_sequence, typed)
            .map_err(|err| {
                PublishError::with_source(PublishErrorKind::InvalidEvent, err)
                    .for_event(outgoing.event_id())
            })?;
        let wire_size = codec::wire_size(&headers, payload.len());
        let limit = self.client.transport().max_payload();
        if wire_size > limit {
            return Err(PublishError::new(PublishErrorKind::PayloadTooLarge {
                size: wire_size,
                limit,
            })
            .for_event(outgoing.event_id()));
        }
        let header_size = wire_size - payload.len();
        if header_size > MAX_JETSTREAM_HEADER_BYTES {
            // The server would refuse it only after the round trip (error
            // 10097), as a bare rejection.
            return Err(PublishError::new(PublishErrorKind::HeadersTooLarge {
                size: header_size,
                limit: MAX_JETSTREAM_HEADER_BYTES,
            })
            .for_event(outgoing.event_id()));
        }
        Ok(Prepared {
            subject,
            outgoing,
            metric_type,
            first_attempt: Some((headers, payload)),
            wire_size,
            started: Instant::now(),
            expected_last_subject_sequence: options.expected_last_subject_sequence,
            span,
        })
    }

    async fn send_with_retries(&self, mut prepared: Prepared<'_>) -> Result<Receipt, PublishError> {
        let result = self.attempt_until_settled(&mut prepared).await;
        self.record(&prepared, result.as_ref().err());
        settled(prepared, result)
    }

    async fn attempt_until_settled(
        &self,
        prepared: &mut Prepared<'_>,
    ) -> Result<Stored, PublishError> {
        let policy = self.client.config().publish_retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut violations = self.client.permission_violations();
        let mut any_timeout = false;
        let mut last_source = None;
        for attempt in 1..=max_attempts {
            if attempt > 1 {
                tracing::debug!(attempt, "retrying publish with the same message id");
                self.client.metrics().publish_retries.add(
                    1,
                    crate::metrics::publish_attributes(prepared.metric_type.clone(), None)
                        .as_slice(),
                );
                tokio::time::sleep(policy.delay(attempt - 1)).await;
            }
            let outcome = match self.send(prepared).await {
                Ok(ack) => self.await_ack(prepared, ack, &mut violations).await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(ack) => {
                    prepared.span.record(
                        "messaging.nats.stream.sequence",
                        i64::try_from(ack.sequence).unwrap_or(i64::MAX),
                    );
                    return Ok(ack);
                }
                Err(AttemptError::Final(err)) => {
                    prepared.span.record("otel.status_code", "ERROR");
                    return Err(err);
                }
                Err(AttemptError::Retryable { timed_out, source }) => {
                    if !timed_out && self.is_missing_stream(&prepared.subject).await {
                        prepared.span.record("otel.status_code", "ERROR");
                        return Err(PublishError::with_source(
                            PublishErrorKind::NoStream {
                                subject: prepared.subject.clone(),
                            },
                            source,
                        ));
                    }
                    any_timeout |= timed_out;
                    last_source = Some(source);
                }
            }
        }
        prepared.span.record("otel.status_code", "ERROR");
        let kind = if any_timeout {
            PublishErrorKind::OutcomeUnknown {
                attempts: max_attempts,
            }
        } else {
            PublishErrorKind::Unavailable {
                attempts: max_attempts,
            }
        };
        Err(match last_source {
            Some(source) => PublishError::with_source(kind, source),
            None => PublishError::new(kind),
        })
    }

    /// After a no-responders reply: is there really no stream for the subject,
    /// or is its leader being elected? Only a definite "none" counts; a failed
    /// lookup (the cluster is busy electing) means "try again".
    async fn is_missing_stream(&self, subject: &str) -> bool {
        self.client.transport().stream_for_subject(subject).await == StreamLookup::NotFound
    }

    /// Sends one attempt; the returned future resolves to its ack.
    async fn send(&self, prepared: &mut Prepared<'_>) -> Result<PendingStore, AttemptError> {
        let (headers, payload) = match prepared.first_attempt.take() {
            Some(first) => first,
            None => prepared
                .outgoing
                .encode(
                    &self.client.config().source,
                    prepared.expected_last_subject_sequence,
                    None,
                )
                .map_err(|err| {
                    AttemptError::Final(PublishError::with_source(
                        PublishErrorKind::InvalidEvent,
                        err,
                    ))
                })?,
        };
        self.client
            .transport()
            .send(prepared.subject.clone(), headers, payload)
            .await
            .map_err(|err| self.classify(prepared, err))
    }

    async fn await_ack(
        &self,
        prepared: &Prepared<'_>,
        ack: PendingStore,
        violations: &mut broadcast::Receiver<PermissionViolation>,
    ) -> Result<Stored, AttemptError> {
        // A publish the server refuses for permissions never gets an ack: the
        // refusal comes as an asynchronous -ERR naming the subject.
        let subject = prepared.subject.as_str();
        let denied = async {
            loop {
                match violations.recv().await {
                    Ok(v) if v.operation == Operation::Publish && v.subject == subject => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            biased;
            ack = ack => match ack {
                Ok(ack) => Ok(ack),
                Err(err) => Err(self.classify(prepared, err)),
            },
            () = denied => Err(AttemptError::Final(PublishError::new(PublishErrorKind::PermissionDenied {
                subject: prepared.subject.clone(),
            }))),
        }
    }

    fn classify(&self, prepared: &Prepared<'_>, err: StoreFailure) -> AttemptError {
        match err.kind {
            StoreFailureKind::TimedOut => AttemptError::Retryable {
                timed_out: true,
                source: err,
            },
            // No responders: no stream captures the subject, or its leader is
            // being elected. `is_missing_stream` tells them apart later.
            StoreFailureKind::NoResponders => AttemptError::Retryable {
                timed_out: false,
                source: err,
            },
            StoreFailureKind::WrongLastSequence { actual } => {
                AttemptError::Final(PublishError::with_source(
                    PublishErrorKind::Conflict {
                        expected: prepared.expected_last_subject_sequence.unwrap_or_default(),
                        actual,
                    },
                    err,
                ))
            }
            StoreFailureKind::MaxPayloadExceeded => {
                let size = prepared.wire_size;
                AttemptError::Final(PublishError::with_source(
                    PublishErrorKind::PayloadTooLarge {
                        size,
                        limit: self.client.transport().max_payload(),
                    },
                    err,
                ))
            }
            StoreFailureKind::BrokenPipe => AttemptError::Retryable {
                timed_out: true,
                source: err,
            },
            StoreFailureKind::Rejected => {
                AttemptError::Final(PublishError::with_source(PublishErrorKind::Rejected, err))
            }
        }
    }
}

/// The type of `E`, parsed.
fn event_type_of<E: Event>() -> Result<EventType, PublishError> {
    EventType::of::<E>()
        .map_err(|err| PublishError::with_source(PublishErrorKind::InvalidSubject, err))
}

/// The result of a settled event: its receipt, or the error naming its id.
fn settled(
    prepared: Prepared<'_>,
    result: Result<Stored, PublishError>,
) -> Result<Receipt, PublishError> {
    match result {
        Ok(ack) => Ok(receipt(prepared, ack)),
        Err(err) => Err(err.for_event(prepared.outgoing.event_id())),
    }
}

/// The receipt of a settled event, taking its id and subject.
fn receipt(prepared: Prepared<'_>, ack: Stored) -> Receipt {
    Receipt {
        event_id: prepared.outgoing.into_event_id(),
        subject: prepared.subject,
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }
}
