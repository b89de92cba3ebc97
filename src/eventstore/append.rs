//! Appending events to an aggregate with an expected version.

use std::time::Duration;

use async_nats::header::{HeaderName, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE};
use bytes::Bytes;
use uuid::Uuid;

use super::aggregate::{encode_event, EncodedEvent};
use super::error::{AppendError, AppendErrorKind, LoadError};
use super::outgoing::{AppendAttributes, AppendEncoder, EventParts};
use super::read::Tip;
use super::{Aggregate, EventStore, Expected, Position, MAX_APPEND, VERSION_HEADER};
use crate::transport::{BatchFailure, BatchFailureKind, BatchMessage, StoredBatch};

use crate::Error;

/// Names the subject `Nats-Expected-Last-Subject-Sequence` is checked on
/// (the aggregate's filter instead of the message's own subject).
const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: HeaderName =
    HeaderName::from_static("Nats-Expected-Last-Subject-Sequence-Subject");

/// [`VERSION_HEADER`], parsed once.
const VERSION: HeaderName = HeaderName::from_static(VERSION_HEADER);

/// Attempts after an unanswered send or a busy stream, with the same ids.
const SEND_ATTEMPTS: u32 = 4;

/// Attempts of an `Any` or `Exists` append that other writers overtook.
const OVERTAKEN_ATTEMPTS: u32 = 16;

/// Event ids are UUIDv5 of the append id and the event's index in it.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1d_0c3e_8a44_4f0e_9d6a_2f61_7c0e_aa15);

/// Options of one append.
#[derive(Clone, Debug, Default)]
pub struct AppendOptions {
    id: Option<String>,
}

impl AppendOptions {
    /// The append's id, from which its events' ids derive: appending again
    /// with the same id and events stores them once. Without it, an append
    /// made while a handler runs takes an id derived from the handled event
    /// (so a redelivered handler appends once); otherwise a new UUIDv7.
    pub fn id(mut self, id: impl Into<String>) -> AppendOptions {
        self.id = Some(id.into());
        self
    }
}

/// Where an append stored its events.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// The append's id (see [`AppendOptions::id`]).
    pub append_id: String,
    /// The stream.
    pub stream: String,
    /// Version of the first event appended.
    pub first_version: u64,
    /// The aggregate's version now: that of the last event appended.
    pub version: u64,
    /// Stream sequence of the first event appended.
    pub first_sequence: u64,
    /// Stream sequence of the last event appended.
    pub sequence: u64,
}

/// Where the position an append is guarded by comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TipFrom {
    /// Read from the stream for this append.
    Read,
    /// Where this store last saw the aggregate (see `positions.rs`).
    Remembered,
    /// Given by the caller ([`EventStore::append_at`]): the server alone
    /// checks it.
    Caller,
}

/// The events of one append, and what writes their messages for each
/// attempt.
struct Batch<'a> {
    append_id: String,
    /// The caller chose the id: a conflict may be its own earlier attempt.
    id_given: bool,
    filter: String,
    events: Vec<PreparedEvent>,
    encoder: AppendEncoder<'a>,
}

/// One event of an append, serialized.
struct PreparedEvent {
    subject: String,
    /// What identifies it when read back (id, type and data), and what its
    /// message is written from.
    identity: EventIdentity,
}

/// An event's id, type and data: a stored event with the same id but
/// another type or data is another append's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventIdentity {
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) data: Option<Bytes>,
}

impl EventStore {
    /// Appends `events` to the instance `key` of `A` if it is as `expected`.
    /// All of them are stored, one after the other with no other event
    /// between them, or none.
    ///
    /// `Expected::Version` at a version this store (or a clone) saw the
    /// aggregate at, by loading it or appending to it, sends the append
    /// at once; another version is looked up first (one direct get).
    /// `Expected::Any` and `Expected::Exists` (when the store saw at least
    /// one event) are sent at once after the last event the store saw;
    /// `Expected::NoStream` and `Expected::Version(0)` always are. Each is
    /// checked by the server against the aggregate's last stream sequence.
    pub async fn append<A: Aggregate>(
        &self,
        key: &str,
        events: Vec<A::Event>,
        expected: Expected,
    ) -> Result<Appended, AppendError> {
        self.append_with::<A>(key, events, expected, AppendOptions::default())
            .await
    }

    /// [`EventStore::append`] with options.
    pub async fn append_with<A: Aggregate>(
        &self,
        key: &str,
        events: Vec<A::Event>,
        expected: Expected,
        options: AppendOptions,
    ) -> Result<Appended, AppendError> {
        let mut batch = self.prepare::<A>(key, &events, options)?;
        let tip = match expected {
            Expected::NoStream | Expected::Version(0) => Tip::default(),
            Expected::Version(version) => {
                // Seen at this version: the server checks the rest.
                if let Some(known) = self.positions.at_version(&batch.filter, version) {
                    return self
                        .append_batch(&mut batch, known, expected, TipFrom::Remembered)
                        .await;
                }
                self.tip(&batch.filter).await.map_err(other)?
            }
            Expected::Any | Expected::Exists => {
                // Wherever the store last saw it, if that shows it exists
                // (`Exists`): the server checks that event is still the
                // last, and when it is not the store reads and retries as
                // it does when overtaken.
                let known = self
                    .positions
                    .last_seen(&batch.filter)
                    .filter(|known| expected == Expected::Any || known.version > 0);
                if let Some(known) = known {
                    return self
                        .append_batch(&mut batch, known, expected, TipFrom::Remembered)
                        .await;
                }
                self.tip(&batch.filter).await.map_err(other)?
            }
        };
        let holds = match expected {
            Expected::Any => true,
            Expected::Exists => tip.version > 0,
            Expected::NoStream => true,
            Expected::Version(version) => tip.version == version,
        };
        if !holds {
            // A retry of an append that was stored after all.
            if batch.id_given {
                if let Some(appended) = self.find_stored(&batch, tip).await? {
                    return Ok(appended);
                }
            }
            return Err(Error::new(AppendErrorKind::Conflict {
                expected,
                actual: tip.version,
            }));
        }
        self.append_batch(&mut batch, tip, expected, TipFrom::Read)
            .await
    }

    /// Appends `events` right after `position` (from
    /// [`Loaded::position`](super::Loaded::position)): as
    /// `Expected::Version(position.version)`, but checked by the server
    /// alone, without reading the aggregate's last event first.
    pub async fn append_at<A: Aggregate>(
        &self,
        key: &str,
        events: &[A::Event],
        position: Position,
    ) -> Result<Appended, AppendError> {
        let mut batch = self.prepare::<A>(key, events, AppendOptions::default())?;
        self.append_batch(
            &mut batch,
            position,
            Expected::Version(position.version),
            TipFrom::Caller,
        )
        .await
    }

    fn prepare<'a, A: Aggregate>(
        &'a self,
        key: &'a str,
        events: &[A::Event],
        options: AppendOptions,
    ) -> Result<Batch<'a>, AppendError> {
        if events.is_empty() {
            return Err(Error::new(AppendErrorKind::Empty));
        }
        if events.len() > MAX_APPEND {
            return Err(Error::new(AppendErrorKind::TooMany {
                count: events.len(),
                limit: MAX_APPEND,
            }));
        }
        let encoded = events
            .iter()
            .map(encode_event::<A>)
            .collect::<Result<Vec<_>, _>>()?;
        let filter = self.aggregate_filter::<A>(key).map_err(|err| {
            Error::with_source(
                AppendErrorKind::InvalidEvent {
                    reason: "invalid aggregate kind or key".into(),
                },
                err,
            )
        })?;
        let id_given = options.id.is_some();
        let append_id = options
            .id
            .or_else(|| crate::lineage::next_follow_up_id(A::KIND))
            .unwrap_or_else(crate::envelope::new_id);
        let config = self.client.config();
        let encoder = AppendEncoder::new(AppendAttributes::current(
            &config.source,
            key,
            config.encoding,
        ))
        .map_err(|err| Error::with_source(invalid_event("does not encode"), err))?;
        let events = encoded
            .into_iter()
            .enumerate()
            .map(|(index, event)| self.prepare_event(key, &append_id, index, event))
            .collect::<Result<_, _>>()?;
        Ok(Batch {
            append_id,
            id_given,
            filter,
            events,
            encoder,
        })
    }

    /// One event's subject and identity (its id derived from the append's).
    fn prepare_event(
        &self,
        key: &str,
        append_id: &str,
        index: usize,
        event: EncodedEvent,
    ) -> Result<PreparedEvent, AppendError> {
        let subject = self
            .client
            .subjects()
            .event(&event.event_type, Some(key))
            .map_err(|err| Error::with_source(invalid_event("invalid key"), err))?;
        Ok(PreparedEvent {
            subject,
            identity: EventIdentity {
                id: event_id(append_id, index),
                event_type: event.event_type.as_str().to_owned(),
                data: event.data,
            },
        })
    }

    /// The messages of `batch` appended after `tip`. Written for each
    /// attempt rather than copied from a kept set: a copy of a header map
    /// costs about as much as writing it, and most appends take one attempt.
    fn messages(&self, batch: &mut Batch<'_>, tip: Tip) -> Result<Vec<BatchMessage>, AppendError> {
        let last = batch.events.len() - 1;
        let limit = self.client.transport().max_payload();
        let mut messages = Vec::with_capacity(batch.events.len());
        for (index, (event, version)) in batch.events.iter().zip(tip.version + 1..).enumerate() {
            let identity = &event.identity;
            let (mut headers, payload) = batch
                .encoder
                .encode(
                    EventParts {
                        id: &identity.id,
                        event_type: &identity.event_type,
                        data: identity.data.clone(),
                    },
                    index == last,
                )
                .map_err(|err| Error::with_source(invalid_event("does not encode"), err))?;
            headers.insert(VERSION, itoa::Buffer::new().format(version));
            if index == 0 {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    itoa::Buffer::new().format(tip.sequence),
                );
                headers.insert(
                    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                    batch.filter.as_str(),
                );
            }
            let size = crate::codec::wire_size(&headers, payload.len());
            if size > limit {
                return Err(Error::new(invalid_event(&format!(
                    "{size} bytes, the server takes {limit}"
                ))));
            }
            messages.push(BatchMessage {
                subject: event.subject.clone(),
                headers,
                payload,
            });
        }
        Ok(messages)
    }

    async fn append_batch(
        &self,
        batch: &mut Batch<'_>,
        mut tip: Tip,
        expected: Expected,
        mut tip_from: TipFrom,
    ) -> Result<Appended, AppendError> {
        let overtaken_may_retry = matches!(expected, Expected::Any | Expected::Exists);
        let mut unanswered = 0;
        let mut overtaken = 0;
        loop {
            let sent = self
                .client
                .transport()
                .send_batch(self.messages(batch, tip)?)
                .await;
            let failure = match sent {
                Ok(stored) => {
                    let appended = appended(batch, tip, stored);
                    self.positions.remember(
                        &batch.filter,
                        Tip {
                            version: appended.version,
                            sequence: appended.sequence,
                        },
                    );
                    return Ok(appended);
                }
                Err(failure) => failure,
            };
            match failure.kind {
                BatchFailureKind::Duplicate => return self.read_back(batch, tip, failure).await,
                BatchFailureKind::WrongLastSequence { .. } => {
                    // A retry of an append whose ack was lost: the server may
                    // check the expectation before the ids (single events).
                    if batch.id_given {
                        if let Some(appended) = self.find_stored(batch, tip).await? {
                            return Ok(appended);
                        }
                    }
                    let now = self.tip(&batch.filter).await.map_err(other)?;
                    overtaken += 1;
                    // A remembered position at the expected version whose
                    // sequence is not the last one any more: the read
                    // decides, as it would have without the guess.
                    let guess_was_stale = tip_from == TipFrom::Remembered
                        && expected == Expected::Version(now.version);
                    tip_from = TipFrom::Read;
                    // `Exists` guarded by a position that showed events: they
                    // may be gone since (a purge), and a retry after `now`
                    // must not append to an empty aggregate.
                    let gone = expected == Expected::Exists && now.version == 0;
                    if !(overtaken_may_retry || guess_was_stale)
                        || gone
                        || overtaken >= OVERTAKEN_ATTEMPTS
                    {
                        return Err(Error::with_source(
                            AppendErrorKind::Conflict {
                                expected,
                                actual: now.version,
                            },
                            failure,
                        ));
                    }
                    tip = now;
                }
                BatchFailureKind::TimedOut
                | BatchFailureKind::NoResponders
                | BatchFailureKind::Busy => {
                    unanswered += 1;
                    if unanswered >= SEND_ATTEMPTS {
                        let kind = match failure.kind {
                            BatchFailureKind::TimedOut => AppendErrorKind::OutcomeUnknown {
                                append_id: batch.append_id.clone(),
                            },
                            BatchFailureKind::NoResponders => AppendErrorKind::NoStream,
                            _ => AppendErrorKind::Conflict {
                                expected,
                                actual: self.tip(&batch.filter).await.map_err(other)?.version,
                            },
                        };
                        return Err(Error::with_source(kind, failure));
                    }
                    tokio::time::sleep(Duration::from_millis(25) * unanswered).await;
                }
                BatchFailureKind::AtomicPublishDisabled => {
                    return Err(Error::with_source(
                        AppendErrorKind::AtomicPublishDisabled {
                            stream: self.stream.clone(),
                        },
                        failure,
                    ))
                }
                BatchFailureKind::TooLarge => {
                    return Err(Error::with_source(
                        AppendErrorKind::TooMany {
                            count: batch.events.len(),
                            limit: MAX_APPEND,
                        },
                        failure,
                    ))
                }
                BatchFailureKind::Unsupported | BatchFailureKind::Rejected => {
                    return Err(Error::with_source(AppendErrorKind::Other, failure))
                }
            }
        }
    }

    /// The server refused `batch` as a duplicate: an earlier attempt stored
    /// it. Reads it back to be sure it is this append's and where it is.
    async fn read_back(
        &self,
        batch: &Batch<'_>,
        tip: Tip,
        failure: BatchFailure,
    ) -> Result<Appended, AppendError> {
        match self.find_stored(batch, tip).await? {
            Some(appended) => Ok(appended),
            None => Err(Error::with_source(
                AppendErrorKind::IdReused {
                    append_id: batch.append_id.clone(),
                },
                failure,
            )),
        }
    }

    /// Where `batch` is stored, if it is: right after `tip` when an attempt
    /// guarded by `tip` stored it (the usual case, a few direct gets), else
    /// anywhere in the aggregate (a full scan, for retries after others
    /// appended).
    async fn find_stored(
        &self,
        batch: &Batch<'_>,
        tip: Tip,
    ) -> Result<Option<Appended>, AppendError> {
        let count = batch.events.len();
        let ids: Vec<&EventIdentity> = batch.events.iter().map(|event| &event.identity).collect();
        let after_tip = self
            .read_few(&batch.filter, tip.sequence, count)
            .await
            .map_err(other)?;
        let mut found = matching(&after_tip, &ids);
        if found.is_none() {
            let mut window = std::collections::VecDeque::with_capacity(count);
            let until = self.tip(&batch.filter).await.map_err(other)?;
            self.replay_range(&batch.filter, 0, until.sequence, |stored| {
                if found.is_none() {
                    if window.len() == count {
                        window.pop_front();
                    }
                    window.push_back(stored);
                    found = matching(window.make_contiguous(), &ids);
                }
                Ok(())
            })
            .await
            .map_err(other)?;
        }
        Ok(found.map(|(first, last)| Appended {
            append_id: batch.append_id.clone(),
            stream: self.stream.clone(),
            first_version: first.version,
            version: last.version,
            first_sequence: first.sequence,
            sequence: last.sequence,
        }))
    }
}

/// The first and last of `stored` (version, sequence) when they are
/// exactly the events `ids`.
fn matching(stored: &[super::read::StoredEvent], ids: &[&EventIdentity]) -> Option<(Tip, Tip)> {
    let all = stored.len() == ids.len()
        && stored
            .iter()
            .zip(ids)
            .all(|(stored, id)| stored.identity().as_ref() == Some(*id));
    let tip = |stored: &super::read::StoredEvent| Tip {
        version: stored.version,
        sequence: stored.sequence,
    };
    match (all, stored.first(), stored.last()) {
        (true, Some(first), Some(last)) => Some((tip(first), tip(last))),
        _ => None,
    }
}

fn appended(batch: &Batch<'_>, tip: Tip, stored: StoredBatch) -> Appended {
    let count = u64::try_from(batch.events.len()).unwrap_or(u64::MAX);
    Appended {
        append_id: batch.append_id.clone(),
        stream: stored.stream,
        first_version: tip.version + 1,
        version: tip.version + count,
        first_sequence: stored.first_sequence,
        sequence: stored.last_sequence,
    }
}

fn invalid_event(reason: &str) -> AppendErrorKind {
    AppendErrorKind::InvalidEvent {
        reason: reason.to_owned(),
    }
}

fn other(err: LoadError) -> AppendError {
    Error::with_source(AppendErrorKind::Other, err)
}

/// The id of the event at `index` of the append `append_id`. Parts are
/// length-prefixed so no two different inputs make the same name.
pub(crate) fn event_id(append_id: &str, index: usize) -> String {
    let mut name = Vec::with_capacity(append_id.len() + 16);
    name.extend_from_slice(&(append_id.len() as u64).to_be_bytes());
    name.extend_from_slice(append_id.as_bytes());
    name.extend_from_slice(&(index as u64).to_be_bytes());
    let mut buffer = Uuid::encode_buffer();
    Uuid::new_v5(&EVENT_ID_NAMESPACE, &name)
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}
