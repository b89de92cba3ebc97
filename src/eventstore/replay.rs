//! Replays: an aggregate type's stored events, from the start, a stream
//! sequence or a point in time, as a [`Stream`] of typed events.
//!
//! A [`Replay`] selects every instance, one instance or any subject filter
//! inside the aggregate type's subjects. Catch-up only (the default) ends
//! at the last event stored when the replay started; [`Replay::live`]
//! continues with events as they are stored. Events are upcast by the
//! aggregate's [`Upcasts`](super::Upcasts) and read through an ordered
//! consumer, so a replay leaves nothing behind on the server. It works the
//! same on the in-memory JetStream of [`crate::testing`].

use chrono::{DateTime, Utc};
use futures_util::{stream, Stream, StreamExt};

use super::error::LoadError;
use super::projection::Projected;
use super::read::{read_error, StoredEvent};
use super::{Aggregate, EventStore};
use crate::transport::ReadFrom;

/// Where a replay starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayFrom {
    /// The first stored event.
    #[default]
    Start,
    /// The first selected event at or after this stream sequence.
    Sequence(u64),
    /// The first selected event stored at or after this time.
    Time(DateTime<Utc>),
}

/// Which events a replay selects.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selection {
    Every,
    Instance(String),
    Subjects(String),
}

/// What [`EventStore::replay`] reads: which events, from where, and
/// whether it follows new ones.
///
/// ```no_run
/// # use jetevents::eventstore::*;
/// # use futures_util::StreamExt;
/// # async fn run<A: Aggregate>(store: EventStore) -> Result<(), LoadError> {
/// let since = chrono::Utc::now() - chrono::Duration::hours(1);
/// let mut events = store
///     .replay::<A>(Replay::every().from(ReplayFrom::Time(since)))
///     .await?;
/// while let Some(event) = events.next().await {
///     let event = event?;
///     println!("{} v{} at #{}", event.key, event.version, event.sequence);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay {
    selection: Selection,
    from: ReplayFrom,
    live: bool,
}

impl Replay {
    /// Every instance of the aggregate type.
    pub fn every() -> Replay {
        Replay::selecting(Selection::Every)
    }

    /// The instance `key`.
    pub fn instance(key: impl Into<String>) -> Replay {
        Replay::selecting(Selection::Instance(key.into()))
    }

    /// The events on subjects matching `filter`, a NATS subject filter
    /// inside the aggregate type's subjects (e.g.
    /// `prod.bank.account.deposited.*.*`). Events that are not the
    /// aggregate's fail to decode.
    pub fn subjects(filter: impl Into<String>) -> Replay {
        Replay::selecting(Selection::Subjects(filter.into()))
    }

    fn selecting(selection: Selection) -> Replay {
        Replay {
            selection,
            from: ReplayFrom::Start,
            live: false,
        }
    }

    /// Starts at `from` instead of the first event.
    pub fn from(mut self, from: ReplayFrom) -> Replay {
        self.from = from;
        self
    }

    /// After catching up, continues with events as they are stored (the
    /// stream then never ends).
    pub fn live(mut self) -> Replay {
        self.live = true;
        self
    }
}

fn read_from(from: ReplayFrom) -> ReadFrom {
    match from {
        ReplayFrom::Start => ReadFrom::Sequence(1),
        ReplayFrom::Sequence(sequence) => ReadFrom::Sequence(sequence),
        ReplayFrom::Time(time) => ReadFrom::Time(time.into()),
    }
}

impl EventStore {
    /// The events `replay` selects, in stream order, decoded (and upcast)
    /// as `A`'s events with their instance key, version and stream
    /// sequence. A catch-up replay ends after the last event stored when it
    /// started; a live one never ends. An undecodable event is an error
    /// item; the stream goes on after it.
    pub async fn replay<A: Aggregate>(
        &self,
        replay: Replay,
    ) -> Result<
        impl Stream<Item = Result<Projected<A>, LoadError>> + Send + Unpin + 'static,
        LoadError,
    > {
        let filter = match replay.selection {
            Selection::Every => self.type_filter::<A>(),
            Selection::Instance(key) => self.aggregate_filter::<A>(&key),
            Selection::Subjects(filter) => Ok(filter),
        }
        .map_err(read_error)?;
        // Taken before the consumer: events stored later belong to live.
        let until = match replay.live {
            true => None,
            false => Some(self.tip(&filter).await?.sequence),
        };
        let read = self
            .client
            .transport()
            .read_ordered(&self.stream, &filter, read_from(replay.from))
            .await
            .map_err(read_error)?;
        let upcasts = A::upcasts();
        let done = until.is_some() && (read.pending == 0 || until == Some(0));
        Ok(stream::unfold(
            (read.messages, upcasts, done),
            move |(mut messages, upcasts, done)| async move {
                if done {
                    return None;
                }
                let message = match messages.next().await? {
                    Ok(message) => message,
                    Err(err) => return Some((Err(read_error(err)), (messages, upcasts, true))),
                };
                let sequence = message.sequence;
                if until.is_some_and(|until| sequence > until) {
                    return None;
                }
                let subject = message.subject.clone();
                let stored = StoredEvent::from(message);
                let event = stored.project::<A>(&subject, &upcasts);
                let done = until.is_some_and(|until| sequence >= until);
                Some((event, (messages, upcasts, done)))
            },
        )
        // Boxed, so callers can poll it without pinning it first.
        .boxed())
    }
}
