//! Bulk ingest: many events into their stream through JetStream's
//! fast-ingest batches, acknowledged in strides rather than one by one,
//! falling back to pipelined publishing where the stream or server does not
//! take them.

use std::collections::VecDeque;

use tracing::Instrument;

use super::attempt::{settled, AttemptError};
use super::one_stream::Capture;
use super::prepare::{event_type_of, OneType, Prepared};
use super::{PublishError, PublishErrorKind, PublishOptions, Publisher, Receipt};
use crate::event::Event;
use crate::transport::fast_ingest::{Ended, FastBatch, FastMessage, Started};

/// Acks in flight when [`Publisher::ingest`] falls back to
/// [`Publisher::publish_many`].
const FALLBACK_WINDOW: usize = 256;

/// How [`Publisher::ingest`] sent the events.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IngestPath {
    /// Fast-ingest batches (nats-server 2.14+, a stream with
    /// [`allow_batch_publish`](crate::provision::StreamSpec::allow_batch_publish)).
    FastBatch,
    /// One publish per event, pipelined as [`Publisher::publish_many`]
    /// does; `reason` says why.
    Pipelined {
        /// Why the fast path was not taken.
        reason: String,
    },
    /// Nothing was sent: no stream captures the events, or not one stream
    /// captures them all ([`PublishErrorKind::NotOneStream`]); each result
    /// says which.
    NotSent,
}

/// An event [`Publisher::ingest`] stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingested {
    /// Stored by a publish of its own: the full receipt.
    Stored(Receipt),
    /// Persisted in a fast-ingest batch. The server confirms a batch's
    /// messages up to a point, not each one's stream sequence; a message
    /// whose id the stream already held (within its duplicate window) was
    /// skipped as stored.
    InBatch {
        /// The event's id (its `Nats-Msg-Id`).
        event_id: String,
        /// The subject it was published on.
        subject: String,
    },
}

impl Ingested {
    /// The event's id.
    pub fn event_id(&self) -> &str {
        match self {
            Ingested::Stored(receipt) => &receipt.event_id,
            Ingested::InBatch { event_id, .. } => event_id,
        }
    }

    /// The subject it was published on.
    pub fn subject(&self) -> &str {
        match self {
            Ingested::Stored(receipt) => &receipt.subject,
            Ingested::InBatch { subject, .. } => subject,
        }
    }
}

/// What [`Publisher::ingest`] did: one result per event, in input order.
#[derive(Debug)]
#[non_exhaustive]
pub struct IngestReport {
    /// How the events were sent.
    pub path: IngestPath,
    /// Per event: stored, or why not.
    pub results: Vec<Result<Ingested, PublishError>>,
}

/// An event taken into a batch, awaiting the server's word on it.
struct InFlight<'a> {
    index: usize,
    prepared: Prepared<'a>,
    batch_sequence: u64,
}

/// The state of one `ingest` call.
struct Ingest<'a> {
    results: Vec<Option<Result<Ingested, PublishError>>>,
    /// Events sent in the open batch and not yet confirmed, oldest first.
    in_flight: VecDeque<InFlight<'a>>,
    /// Events to send (again) before the next new one: those after a
    /// refused event, which the server did not take.
    resend: VecDeque<(usize, Prepared<'a>)>,
    /// Events whose outcome is unknown (a batch went silent) or that met a
    /// retryable refusal: published one by one, with the same ids, at the
    /// end.
    retry_later: Vec<(usize, Prepared<'a>)>,
}

impl Publisher {
    /// Ingests many events of one type as fast as the stream takes them:
    /// through fast-ingest batches when the stream allows batch publish
    /// (nats-server 2.14+), else pipelined like
    /// [`publish_many`](Self::publish_many). Returns one result per event,
    /// in input order, and the path taken.
    ///
    /// A batch is persisted in input order without gaps (other publishers'
    /// events may sit between its events). The server acknowledges in
    /// strides, so an event in a batch is confirmed without its own stream
    /// sequence ([`Ingested::InBatch`]). Events after one the stream refuses
    /// (a conflict, a limit) are sent again in a new batch; events whose
    /// batch went silent (a leader election, a broken connection) are
    /// published again one by one with the same ids, so each is stored once
    /// within the duplicate window, and reported as
    /// [`OutcomeUnknown`](PublishErrorKind::OutcomeUnknown) if that fails
    /// too.
    ///
    /// All events must be captured by one stream (a batch belongs to one
    /// stream), whichever path is taken: before sending anything, `ingest`
    /// looks their streams up (`$JS.API.STREAM.NAMES`: one request when a
    /// stream captures every key of the type) and, when they are not all in
    /// one, sends nothing and fails every event with
    /// [`NotOneStream`](PublishErrorKind::NotOneStream)
    /// ([`IngestPath::NotSent`]); when no stream captures them, with
    /// [`NoStream`](PublishErrorKind::NoStream). Split such a call per
    /// stream, or publish with [`publish_many`](Self::publish_many).
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # struct Reading { sensor: String, value: f64 }
    /// # impl jetevents::Event for Reading { const TYPE: &'static str = "plant.sensor.read.v1"; }
    /// # async fn run(publisher: jetevents::publish::Publisher, readings: Vec<Reading>) {
    /// let report = publisher.ingest(&readings).await;
    /// println!("{:?}: {} stored", report.path, report.results.iter().filter(|r| r.is_ok()).count());
    /// # }
    /// ```
    pub async fn ingest<E: Event>(&self, events: &[E]) -> IngestReport {
        if let Some(refused) = self.refuse_unless_one_stream(events).await {
            return refused;
        }
        let Some(batches) = self.client.transport().fast_batches() else {
            return self
                .ingest_pipelined(events, "the transport has no fast-ingest batches")
                .await;
        };
        let options = PublishOptions::default();
        // The type is the same for every event: parsed and encoded once.
        let one_type = OneType::of::<E>(self);
        let mut ingest = Ingest {
            results: Vec::with_capacity(events.len()),
            in_flight: VecDeque::new(),
            resend: VecDeque::new(),
            retry_later: Vec::new(),
        };
        ingest.results.resize_with(events.len(), || None);
        let mut next_event = 0;
        let mut batch: Option<Box<FastBatch>> = None;
        let mut batches_opened = 0_u64;
        loop {
            let (index, mut prepared) = match ingest.resend.pop_front() {
                Some(resend) => resend,
                None if next_event < events.len() => {
                    let index = next_event;
                    next_event += 1;
                    match self
                        .prepare_one_of_many(&one_type, &events[index], &options)
                        .await
                    {
                        Ok(prepared) => (index, prepared),
                        Err(err) => {
                            ingest.results[index] = Some(Err(err));
                            continue;
                        }
                    }
                }
                None => match batch.take() {
                    // Ending the batch may hand back events it did not
                    // take (after a refusal): they go in the next one.
                    Some(open) => {
                        let end = open.finish().await;
                        self.settle_batch(&mut ingest, end);
                        continue;
                    }
                    None => break,
                },
            };
            let message = match self.wire(&mut prepared) {
                Ok((headers, payload)) => FastMessage {
                    subject: &prepared.subject,
                    headers,
                    payload,
                },
                Err(err) => {
                    self.record(&prepared, Some(&err));
                    ingest.results[index] = Some(settled(prepared, Err(err)).map(Ingested::Stored));
                    continue;
                }
            };
            let Some(open) = batch.as_mut() else {
                match batches.start(message).await {
                    Started::Open(open) => {
                        batches_opened += 1;
                        ingest.in_flight.push_back(InFlight {
                            index,
                            prepared,
                            batch_sequence: 1,
                        });
                        batch = Some(open);
                    }
                    Started::Disabled(_) if batches_opened == 0 => {
                        return self
                            .fall_back(events, ingest, (index, prepared, None), next_event)
                            .await;
                    }
                    Started::StoredByOldServer(stored) if batches_opened == 0 => {
                        return self
                            .fall_back(events, ingest, (index, prepared, Some(stored)), next_event)
                            .await;
                    }
                    Started::Disabled(err) => {
                        // Turned off between two batches of this call.
                        let err = PublishError::with_source(PublishErrorKind::Rejected, err);
                        self.record(&prepared, Some(&err));
                        ingest.results[index] =
                            Some(settled(prepared, Err(err)).map(Ingested::Stored));
                    }
                    Started::StoredByOldServer(stored) | Started::Duplicate(stored) => {
                        self.record(&prepared, None);
                        ingest.results[index] =
                            Some(settled(prepared, Ok(stored)).map(Ingested::Stored));
                    }
                    Started::Failed(failure) => match self.classify(&prepared, failure) {
                        AttemptError::Retryable { .. } => {
                            ingest.retry_later.push((index, prepared));
                        }
                        AttemptError::Final(err) => {
                            self.record(&prepared, Some(&err));
                            ingest.results[index] =
                                Some(settled(prepared, Err(err)).map(Ingested::Stored));
                        }
                    },
                }
                continue;
            };
            match open.append(message).await {
                Ok(batch_sequence) => {
                    ingest.in_flight.push_back(InFlight {
                        index,
                        prepared,
                        batch_sequence,
                    });
                    let persisted = open.persisted();
                    self.confirm(&mut ingest, persisted);
                }
                Err(end) => {
                    // Not sent: first in line for the next batch.
                    ingest.resend.push_front((index, prepared));
                    batch = None;
                    self.settle_batch(&mut ingest, end);
                }
            }
        }
        IngestReport {
            path: IngestPath::FastBatch,
            results: self.retry_one_by_one(ingest).await,
        }
    }

    /// Refuses, before anything is sent, the events of a call that are not
    /// all captured by one stream (see [`one_stream`](super::one_stream)).
    async fn refuse_unless_one_stream<E: Event>(&self, events: &[E]) -> Option<IngestReport> {
        // An invalid type fails every event as it is prepared.
        let event_type = event_type_of::<E>().ok()?;
        let subjects = self.client.subjects();
        let unkeyed = subjects.event(&event_type, None).ok()?;
        let subject_of = |event: &E| subjects.event(&event_type, event.key().as_deref());
        // An invalid key fails its event as it is prepared.
        let valid = events.iter().filter_map(|event| subject_of(event).ok());
        let not_one_stream = match self.capture_of(&unkeyed, valid).await {
            Capture::ByOne => return None,
            Capture::ByNone => None,
            Capture::Mixed(kind) => Some(kind),
        };
        let results = events
            .iter()
            .map(|event| {
                Err(match (subject_of(event), &not_one_stream) {
                    (Err(err), _) => {
                        PublishError::with_source(PublishErrorKind::InvalidSubject, err)
                    }
                    (Ok(_), Some(kind)) => PublishError::new(kind.clone()),
                    (Ok(subject), None) => {
                        PublishError::new(PublishErrorKind::NoStream { subject })
                    }
                })
            })
            .collect();
        Some(IngestReport {
            path: IngestPath::NotSent,
            results,
        })
    }

    /// Publishes the events left for later one by one (same ids) and
    /// returns every result.
    async fn retry_one_by_one(&self, ingest: Ingest<'_>) -> Vec<Result<Ingested, PublishError>> {
        let Ingest {
            mut results,
            retry_later,
            ..
        } = ingest;
        for (index, prepared) in retry_later {
            let span = prepared.span.clone();
            results[index] = Some(
                self.send_with_retries(prepared)
                    .instrument(span)
                    .await
                    .map(Ingested::Stored),
            );
        }
        results.into_iter().map(unsettled_is_unknown).collect()
    }

    /// Files the events of the open batch confirmed persisted.
    fn confirm(&self, ingest: &mut Ingest<'_>, persisted: u64) {
        while ingest
            .in_flight
            .front()
            .is_some_and(|event| event.batch_sequence <= persisted)
        {
            if let Some(event) = ingest.in_flight.pop_front() {
                self.record(&event.prepared, None);
                ingest.results[event.index] = Some(Ok(in_batch(event.prepared)));
            }
        }
    }

    /// Files every event of an ended batch: persisted, refused, sent again
    /// in the next batch (after a refusal the server takes nothing more),
    /// or retried one by one (after silence).
    fn settle_batch<'a>(&self, ingest: &mut Ingest<'a>, end: Ended) {
        self.confirm(ingest, end.persisted);
        let refused_at = end.refused.as_ref().map(|(sequence, _)| *sequence);
        let mut refusal = end.refused.map(|(_, failure)| failure);
        let mut not_taken = Vec::new();
        for event in ingest.in_flight.drain(..) {
            match refused_at {
                Some(at) if event.batch_sequence == at => {
                    let Some(failure) = refusal.take() else {
                        continue;
                    };
                    match self.classify(&event.prepared, failure) {
                        AttemptError::Retryable { .. } => {
                            ingest.retry_later.push((event.index, event.prepared));
                        }
                        AttemptError::Final(err) => {
                            self.record(&event.prepared, Some(&err));
                            ingest.results[event.index] =
                                Some(settled(event.prepared, Err(err)).map(Ingested::Stored));
                        }
                    }
                }
                Some(at) if event.batch_sequence > at && end.unknown.is_none() => {
                    not_taken.push((event.index, event.prepared));
                }
                _ => ingest.retry_later.push((event.index, event.prepared)),
            }
        }
        // In input order, ahead of anything not sent yet.
        for event in not_taken.into_iter().rev() {
            ingest.resend.push_front(event);
        }
    }

    /// The stream or server takes no fast batches, as the first event's
    /// answer showed: that event is published on its own (unless a server
    /// without fast ingest stored it already), the rest pipelined.
    async fn fall_back<'a, E: Event>(
        &self,
        events: &'a [E],
        mut ingest: Ingest<'a>,
        (index, prepared, stored): (usize, Prepared<'a>, Option<crate::transport::Stored>),
        next_event: usize,
    ) -> IngestReport {
        ingest.results[index] = Some(match stored {
            Some(stored) => {
                self.record(&prepared, None);
                settled(prepared, Ok(stored)).map(Ingested::Stored)
            }
            // Before the rest, to keep the input order.
            None => {
                let span = prepared.span.clone();
                self.send_with_retries(prepared)
                    .instrument(span)
                    .await
                    .map(Ingested::Stored)
            }
        });
        let rest = self
            .publish_many(&events[next_event..], FALLBACK_WINDOW)
            .await;
        for (slot, result) in ingest.results[next_event..].iter_mut().zip(rest) {
            *slot = Some(result.map(Ingested::Stored));
        }
        IngestReport {
            path: IngestPath::Pipelined {
                reason: "the stream does not allow batch publish, or the server predates it"
                    .to_owned(),
            },
            results: self.retry_one_by_one(ingest).await,
        }
    }

    async fn ingest_pipelined<E: Event>(&self, events: &[E], reason: &str) -> IngestReport {
        IngestReport {
            path: IngestPath::Pipelined {
                reason: reason.to_owned(),
            },
            results: self
                .publish_many(events, FALLBACK_WINDOW)
                .await
                .into_iter()
                .map(|result| result.map(Ingested::Stored))
                .collect(),
        }
    }
}

fn in_batch(prepared: Prepared<'_>) -> Ingested {
    Ingested::InBatch {
        event_id: prepared.outgoing.into_event_id(),
        subject: prepared.subject,
    }
}

/// A slot nothing filled cannot be: reported as unknown, never as stored.
fn unsettled_is_unknown(
    result: Option<Result<Ingested, PublishError>>,
) -> Result<Ingested, PublishError> {
    result.unwrap_or_else(|| {
        Err(PublishError::new(PublishErrorKind::OutcomeUnknown {
            attempts: 0,
        }))
    })
}
