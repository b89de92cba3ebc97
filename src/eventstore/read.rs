//! Reading an aggregate's events: its last one (where it stands) and the
//! ones after a stream sequence.
//!
//! A replay reads through an ordered read of the transport (on NATS an
//! ordered pull consumer filtered on the aggregate: the server streams the
//! events in batches, where a direct get costs one round trip per event).

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;

use super::append::EventIdentity;
use super::error::{LoadError, LoadErrorKind};
use super::projection::Projected;
use super::upcast::Upcasts;
use super::{Aggregate, EventStore, VERSION_HEADER};
use crate::event::EventType;
use crate::subject::{escape_key, unescape_key};
use crate::transport::{ReadFrom, StreamMessage};
use crate::Error;

/// Where an aggregate stands, as the store reads it.
pub(crate) use super::Position as Tip;

/// One stored event of an aggregate, not decoded yet.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) sequence: u64,
    pub(crate) version: u64,
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) payload: Bytes,
}

impl From<StreamMessage> for StoredEvent {
    fn from(message: StreamMessage) -> StoredEvent {
        StoredEvent::new(message.sequence, message.headers, message.payload)
    }
}

impl StoredEvent {
    pub(crate) fn new(sequence: u64, headers: Option<HeaderMap>, payload: Bytes) -> StoredEvent {
        let version = headers
            .as_ref()
            .and_then(|headers| headers.get(VERSION_HEADER))
            .and_then(|value| value.as_str().parse().ok())
            .unwrap_or(0);
        StoredEvent {
            sequence,
            version,
            headers,
            payload,
        }
    }

    /// The event's id, type and data.
    pub(crate) fn identity(&self) -> Option<EventIdentity> {
        crate::codec::decode(self.headers.as_ref(), &self.payload)
            .ok()
            .map(|envelope| EventIdentity {
                id: envelope.id,
                event_type: envelope.event_type,
                data: envelope.data,
            })
    }

    /// The event as a projection or a replay sees it, with the key its
    /// `subject` ends in.
    pub(crate) fn project<A: Aggregate>(
        &self,
        subject: &str,
        upcasts: &Upcasts,
    ) -> Result<Projected<A>, LoadError> {
        let token = subject.rsplit('.').next().unwrap_or_default();
        let key = unescape_key(token).map_err(|err| {
            Error::with_source(
                LoadErrorKind::Undecodable {
                    sequence: self.sequence,
                    reason: "its subject does not end in a key".into(),
                },
                err,
            )
        })?;
        Ok(Projected::new(
            self.sequence,
            key,
            self.version,
            self.decode::<A>(upcasts)?,
        ))
    }

    /// Its CloudEvents id (`None`: not a CloudEvent).
    pub(crate) fn id(&self) -> Option<String> {
        crate::codec::decode(self.headers.as_ref(), &self.payload)
            .ok()
            .map(|envelope| envelope.id)
    }

    /// Decodes it as one of `A`'s events, upcast by `upcasts`.
    pub(crate) fn decode<A: Aggregate>(&self, upcasts: &Upcasts) -> Result<A::Event, LoadError> {
        self.decode_with_id::<A>(upcasts).map(|(_, event)| event)
    }

    /// Its CloudEvents id, and it decoded as one of `A`'s events, upcast by
    /// `upcasts`.
    pub(crate) fn decode_with_id<A: Aggregate>(
        &self,
        upcasts: &Upcasts,
    ) -> Result<(String, A::Event), LoadError> {
        let envelope =
            crate::codec::decode(self.headers.as_ref(), &self.payload).map_err(|err| {
                Error::with_source(
                    LoadErrorKind::Undecodable {
                        sequence: self.sequence,
                        reason: "not a CloudEvent".into(),
                    },
                    err,
                )
            })?;
        let event = super::aggregate::decode_event::<A>(
            upcasts,
            &envelope.event_type,
            envelope.data.as_deref(),
            self.sequence,
        )?;
        Ok((envelope.id, event))
    }
}

pub(crate) fn read_error(err: impl Into<crate::error::BoxError>) -> LoadError {
    Error::with_source(LoadErrorKind::Read, err)
}

/// Refuses a `KIND` that is not the two first tokens of a valid type.
fn check_kind<A: Aggregate>() -> Result<(), crate::subject::SubjectError> {
    let mut probe = String::with_capacity(A::KIND.len() + 7);
    probe.push_str(A::KIND);
    probe.push_str(".any.v1");
    EventType::parse(&probe).map(drop)
}

impl EventStore {
    /// The filter selecting every event of `A`'s instance `key`.
    pub(crate) fn aggregate_filter<A: Aggregate>(
        &self,
        key: &str,
    ) -> Result<String, crate::subject::SubjectError> {
        check_kind::<A>()?;
        let key = escape_key(key)?;
        let env = self.client.subjects().env();
        // Pushed rather than `format!`ed: this runs on every append.
        let mut filter = String::with_capacity(env.len() + A::KIND.len() + key.len() + 6);
        for part in [env, ".", A::KIND, ".*.*.", &key] {
            filter.push_str(part);
        }
        Ok(filter)
    }

    /// The filter selecting every instance of `A`.
    pub(crate) fn type_filter<A: Aggregate>(&self) -> Result<String, crate::subject::SubjectError> {
        check_kind::<A>()?;
        Ok(format!(
            "{}.{}.*.*.*",
            self.client.subjects().env(),
            A::KIND
        ))
    }

    /// Where the aggregate selected by `filter` stands now.
    pub(crate) async fn tip(&self, filter: &str) -> Result<Tip, LoadError> {
        Ok(self.last_event(filter).await?.0)
    }

    /// Where the aggregate selected by `filter` stands now, and its last
    /// event (`None`: no events).
    pub(crate) async fn last_event(
        &self,
        filter: &str,
    ) -> Result<(Tip, Option<StoredEvent>), LoadError> {
        let last = self
            .client
            .transport()
            .last_message(&self.stream, filter)
            .await
            .map_err(read_error)?
            .map(StoredEvent::from);
        let tip = last.as_ref().map_or_else(Tip::default, |last| Tip {
            version: last.version,
            sequence: last.sequence,
        });
        self.positions.remember(filter, tip);
        Ok((tip, last))
    }

    /// Up to `limit` events of `filter` after stream sequence `after`, one
    /// direct get each (for short reads).
    pub(crate) async fn read_few(
        &self,
        filter: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, LoadError> {
        let mut events = Vec::with_capacity(limit);
        let mut from = after + 1;
        while events.len() < limit {
            let next = self
                .client
                .transport()
                .next_message(&self.stream, filter, from)
                .await
                .map_err(read_error)?;
            let Some(message) = next else { break };
            from = message.sequence + 1;
            events.push(StoredEvent::from(message));
        }
        Ok(events)
    }

    /// Calls `each` on every event of `filter` after stream sequence `after`
    /// up to and including `until`, in order.
    pub(crate) async fn replay_range(
        &self,
        filter: &str,
        after: u64,
        until: u64,
        mut each: impl FnMut(StoredEvent) -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        if after >= until {
            return Ok(());
        }
        let mut read = self
            .client
            .transport()
            .read_ordered(&self.stream, filter, ReadFrom::Sequence(after + 1))
            .await
            .map_err(read_error)?;
        while let Some(message) = read.messages.next().await {
            let event = StoredEvent::from(message.map_err(read_error)?);
            let sequence = event.sequence;
            each(event)?;
            if sequence >= until {
                return Ok(());
            }
        }
        Err(read_error(
            "the replay ended before the aggregate's last event",
        ))
    }
}
