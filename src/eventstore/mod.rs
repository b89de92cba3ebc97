//! Event sourcing on JetStream: aggregates stored as their events.
//!
//! An aggregate instance (an [`Aggregate`] type and a key) keeps its events
//! on subjects ending in its key,
//! `{env}.{domain}.{entity}.{action}.{version}.{key}`, so the filter
//! `{env}.{domain}.{entity}.*.*.{key}` selects them all, in order. Each
//! event carries its aggregate version (1, 2, ...) in the
//! `Jetevents-Aggregate-Version` header.
//!
//! - [`EventStore::append`] stores events with an [`Expected`] version.
//!   Several events are one JetStream atomic batch: all stored, contiguous,
//!   or none. The batch's first message carries
//!   `Nats-Expected-Last-Subject-Sequence` with
//!   `Nats-Expected-Last-Subject-Sequence-Subject` set to the aggregate's
//!   filter, so the server refuses it when anyone appended since.
//! - Event ids are derived from the append's id, so an append retried after
//!   a lost ack is refused as a duplicate and read back instead of stored
//!   twice.
//! - [`EventStore::load`] rebuilds the state from the latest
//!   [snapshot](Snapshots) and the events after it. A snapshot records the
//!   id of the event it ends on, and is not used unless the aggregate's
//!   event at its sequence is still that one (after a purge or a recreated
//!   stream it may be another). A snapshot save never replaces a newer
//!   snapshot.
//! - [`Upcasts`] read events stored in an older version as the current
//!   one, on load, in projections and in replays.
//! - [`EventStore::replay`] streams an aggregate type's events from the
//!   start, a stream sequence or a point in time, catching up or live.
//! - [`EventStore::execute`] loads, decides and appends, retrying a bounded
//!   number of times when another writer got there first.
//! - An append with [`Expected::Version`] needs the stream sequence of the
//!   aggregate's last event (the server checks sequences, not versions).
//!   The store remembers where it last saw each aggregate (loaded or
//!   appended to), so that load, decide, append at the loaded version
//!   reads nothing more; when another writer appended since, the server
//!   refuses the guess and the store reads the last event as before (see
//!   `positions.rs`). `Expected::Any` and `Expected::Exists` use the
//!   remembered position the same way.
//!
//! - [`projection`]: read models fed by an aggregate type's events, each
//!   applied once, with a checkpoint, a lease and rebuilds.
//!
//! The stream must allow atomic publish and direct gets:
//! [`EventStore::provision`] creates it so.
//!
//! Appends, loads, [snapshots](Snapshots::provision), replays and
//! projection runners (with [`KvCheckpoints::provision`](projection::KvCheckpoints::provision)
//! and [`Lease::provision`](projection::Lease::provision)) work the same on
//! a client of the in-memory JetStream ([`crate::testing`],
//! `Client::in_memory`), for a service's unit tests.

mod aggregate;
mod append;
mod bucket;
mod command;
mod error;
mod load;
mod outgoing;
mod positions;
pub mod projection;
mod read;
mod replay;
mod snapshot;
mod upcast;

use std::sync::Arc;
use std::time::Duration;

pub use aggregate::Aggregate;
pub use append::{AppendOptions, Appended};
pub use command::Executed;
pub use error::{
    AppendError, AppendErrorKind, CommandError, CommandErrorKind, LoadError, LoadErrorKind,
};
pub use replay::{Replay, ReplayFrom};
pub use snapshot::{SnapshotPolicy, Snapshots};
pub use upcast::Upcasts;

use crate::client::Client;

/// The header holding an event's aggregate version.
pub const VERSION_HEADER: &str = "Jetevents-Aggregate-Version";

/// Most events one append stores: the server's atomic batch limit.
pub const MAX_APPEND: usize = 1_000;

/// What an append expects of the aggregate it appends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expected {
    /// Whatever its version: append after its last event.
    Any,
    /// No events yet.
    NoStream,
    /// At least one event.
    Exists,
    /// Exactly this version (0: no events yet, as `NoStream`).
    Version(u64),
}

/// Where an aggregate stands: its version and its last event's stream
/// sequence (both 0 without events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Position {
    /// How many events it has.
    pub version: u64,
    /// Stream sequence of its last event.
    pub sequence: u64,
}

/// An aggregate's state and where it stands.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state after every event.
    pub state: A,
    /// Its version: how many events it has (0: none).
    pub version: u64,
    /// Stream sequence of its last event (0: none).
    pub sequence: u64,
    /// CloudEvents id of its last event (`None`: no events), which a
    /// [snapshot](Snapshots::save) of this state records.
    pub last_event_id: Option<String>,
    /// Events applied on top of the snapshot (all of them without one).
    pub replayed: u64,
}

impl<A> Loaded<A> {
    /// Where it stands, to append right after it with
    /// [`EventStore::append_at`].
    pub fn position(&self) -> Position {
        Position {
            version: self.version,
            sequence: self.sequence,
        }
    }
}

/// Settings of a stream made for aggregates.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreStream {
    /// Stream name.
    pub name: String,
    /// The domain whose subjects it stores (`{env}.{domain}.>`).
    pub domain: String,
    /// Replicas (1 for a single server).
    pub replicas: usize,
    /// File (the default) or memory.
    pub storage: crate::nats::jetstream::stream::StorageType,
    /// Window in which a repeated event id is refused as a duplicate: an
    /// append retried later than this would be stored twice.
    pub duplicate_window: Duration,
}

impl StoreStream {
    /// A stream `name` for `domain`, one replica, a two-minute duplicate
    /// window (JetStream's default).
    pub fn new(name: impl Into<String>, domain: impl Into<String>) -> StoreStream {
        StoreStream {
            name: name.into(),
            domain: domain.into(),
            replicas: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Appends and loads aggregates in one stream. Cheap to clone.
///
/// ```no_run
/// # use jetevents::eventstore::*;
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Account;
/// # #[derive(serde::Serialize, serde::Deserialize)] enum AccountEvent {
/// #     #[serde(rename = "opened.v1")] Opened }
/// # #[derive(Debug, thiserror::Error)] #[error("no")] struct No;
/// # impl Aggregate for Account {
/// #     const KIND: &'static str = "bank.account";
/// #     type Event = AccountEvent; type Command = (); type Error = No;
/// #     fn apply(&mut self, _: &AccountEvent) {}
/// #     fn handle(&self, _: &()) -> Result<Vec<AccountEvent>, No> { Ok(vec![]) }
/// # }
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let store = EventStore::provision(&client, StoreStream::new("BANK", "bank")).await?;
/// store.append::<Account>("acc-1", vec![AccountEvent::Opened], Expected::NoStream).await?;
/// let account = store.load::<Account>("acc-1").await?;
/// assert_eq!(account.version, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EventStore {
    client: Client,
    stream: String,
    snapshots: Option<Snapshots>,
    /// Shared by its clones: what one loads, another can append after.
    positions: Arc<positions::KnownPositions>,
}

/// Why provisioning the store failed.
pub type ProvisionError = crate::Error<ProvisionErrorKind>;

/// What went wrong provisioning.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionErrorKind {
    /// The domain is not a valid subject token.
    #[error("invalid domain")]
    InvalidDomain,
    /// The server refused or did not answer.
    #[error("the server refused the stream or bucket")]
    Server,
    /// What was asked needs a NATS connection, and the client runs on the
    /// in-memory JetStream.
    #[error("this needs a NATS connection")]
    NeedsNats,
}

impl EventStore {
    /// A store of the aggregates in `stream`, which must exist.
    pub fn new(client: Client, stream: impl Into<String>) -> EventStore {
        EventStore {
            client,
            stream: stream.into(),
            snapshots: None,
            positions: Arc::default(),
        }
    }

    /// Creates the stream (or updates it) to allow atomic publish and
    /// direct gets, and returns a store of it.
    pub async fn provision(
        client: &Client,
        stream: StoreStream,
    ) -> Result<EventStore, ProvisionError> {
        let subjects = client
            .subjects()
            .domain(&stream.domain)
            .map_err(|err| crate::Error::with_source(ProvisionErrorKind::InvalidDomain, err))?;
        #[cfg(feature = "testing")]
        if let Some(memory) = client.memory() {
            // The in-memory JetStream always allows atomic publish and
            // direct gets, and keeps everything in memory.
            let mut config = crate::testing::StreamConfig::new(&stream.name, [subjects]);
            config.duplicate_window = stream.duplicate_window;
            let created = match memory.stream_info(&stream.name) {
                Some(_) => memory.update_stream(config),
                None => memory.create_stream(config),
            };
            created.map_err(|err| crate::Error::with_source(ProvisionErrorKind::Server, err))?;
            return Ok(EventStore::new(client.clone(), stream.name));
        }
        let jetstream = client
            .nats_transport("the event store")
            .map_err(|err| crate::Error::with_source(ProvisionErrorKind::NeedsNats, err))?
            .jetstream
            .clone();
        jetstream
            .create_or_update_stream(async_nats::jetstream::stream::Config {
                name: stream.name.clone(),
                subjects: vec![subjects],
                num_replicas: stream.replicas,
                storage: stream.storage,
                duplicate_window: stream.duplicate_window,
                allow_atomic_publish: true,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|err| crate::Error::with_source(ProvisionErrorKind::Server, err))?;
        Ok(EventStore::new(client.clone(), stream.name))
    }

    /// The same store, loading from and saving to `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Snapshots) -> EventStore {
        self.snapshots = Some(snapshots);
        self
    }

    /// The stream it stores in.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The client it uses.
    pub fn client(&self) -> &Client {
        &self.client
    }
}
