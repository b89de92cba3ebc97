//! Appending to aggregates: versions, expected versions, atomic multi-event
//! appends, retried appends, bad input; each case on a real nats-server and
//! on the in-memory JetStream (but the stream settings only a server has).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::eventstore::{
    Aggregate, AppendErrorKind, AppendOptions, EventStore, Expected, MAX_APPEND,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[macro_use]
mod eventstore_support;
use eventstore_support::{
    connect, deposits, shared_server, stored_messages, unique, Account, AccountEvent, Backend,
    World,
};

on_both_backends!(
    an_append_stores_consecutive_versions_on_the_aggregates_subjects,
    each_expectation_is_checked_and_a_conflict_says_the_actual_version,
    the_server_refuses_a_stale_multi_event_append_as_a_whole,
    an_append_retried_with_its_id_is_stored_once,
    an_id_reused_for_other_events_is_refused,
    bad_appends_get_typed_errors_and_store_nothing,
);

fn conflict_actual(kind: &AppendErrorKind) -> u64 {
    match kind {
        AppendErrorKind::Conflict { actual, .. } => *actual,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn an_append_stores_consecutive_versions_on_the_aggregates_subjects(on: Backend) {
    let world = World::fresh(on).await;
    let (client, store) = (&world.client, &world.store);
    let opened = AccountEvent::Opened {
        owner: "ada".into(),
    };
    let first = store
        .append::<Account>("a-1", vec![opened], Expected::NoStream)
        .await
        .unwrap();
    assert_eq!((first.first_version, first.version), (1, 1));
    let second = store
        .append::<Account>("a-1", deposits([5, 7, 9]), Expected::Version(1))
        .await
        .unwrap();
    assert_eq!((second.first_version, second.version), (2, 4));
    assert_eq!(second.sequence - second.first_sequence, 2);
    // Another aggregate's events are not this one's.
    store
        .append::<Account>("a-2", deposits([1]), Expected::Any)
        .await
        .unwrap();

    let env = client.subjects().env().to_owned();
    let stored = world.stored("a-1").await;
    let subjects: Vec<_> = stored.iter().map(|(_, s, v)| (s.clone(), *v)).collect();
    assert_eq!(
        subjects,
        [
            (format!("{env}.bank.account.opened.v1.a-1"), 1),
            (format!("{env}.bank.account.deposited.v1.a-1"), 2),
            (format!("{env}.bank.account.deposited.v1.a-1"), 3),
            (format!("{env}.bank.account.deposited.v1.a-1"), 4),
        ]
    );
    let loaded = store.load::<Account>("a-1").await.unwrap();
    assert_eq!(loaded.version, 4);
    assert_eq!(loaded.sequence, second.sequence);
    assert_eq!(loaded.state.amounts, [5, 7, 9]);
    assert!(loaded.state.open);
}

async fn each_expectation_is_checked_and_a_conflict_says_the_actual_version(on: Backend) {
    let world = World::fresh(on).await;
    let store = &world.store;
    let err = store
        .append::<Account>("b", deposits([1]), Expected::Exists)
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err.kind()), 0);
    store
        .append::<Account>("b", deposits([1, 2]), Expected::Any)
        .await
        .unwrap();
    for expected in [
        Expected::NoStream,
        Expected::Version(0),
        Expected::Version(1),
        Expected::Version(3),
    ] {
        let err = store
            .append::<Account>("b", deposits([3, 4, 5]), expected)
            .await
            .unwrap_err();
        assert_eq!(conflict_actual(err.kind()), 2, "{expected:?}");
    }
    // The refused multi-event appends stored nothing.
    assert_eq!(world.stored("b").await.len(), 2);
    let appended = store
        .append::<Account>("b", deposits([3]), Expected::Exists)
        .await
        .unwrap();
    assert_eq!(appended.version, 3);
    let appended = store
        .append::<Account>("b", deposits([4, 5]), Expected::Version(3))
        .await
        .unwrap();
    assert_eq!(appended.version, 5);
}

async fn the_server_refuses_a_stale_multi_event_append_as_a_whole(on: Backend) {
    // Two writers loaded version 1; the slower one's guarded batch must be
    // refused by the server, not by a check in the client.
    let world = World::fresh(on).await;
    let store = &world.store;
    store
        .append::<Account>("c", deposits([1]), Expected::NoStream)
        .await
        .unwrap();
    let loaded = store.load::<Account>("c").await.unwrap();
    store
        .append::<Account>("c", deposits([2]), Expected::Version(1))
        .await
        .unwrap();
    let err = store
        .append_at::<Account>("c", &deposits([10, 11, 12]), loaded.position())
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err.kind()), 2);
    assert_eq!(world.stored("c").await.len(), 2);
}

async fn an_append_retried_with_its_id_is_stored_once(on: Backend) {
    let world = World::fresh(on).await;
    let store = &world.store;
    let options = AppendOptions::default().id("append-1");
    let first = store
        .append_with::<Account>(
            "d",
            deposits([1, 2, 3]),
            Expected::NoStream,
            options.clone(),
        )
        .await
        .unwrap();
    // The same append again, as after a lost ack: with its expectation
    // (refused as a duplicate batch, then read back) ...
    let again = store
        .append_with::<Account>(
            "d",
            deposits([1, 2, 3]),
            Expected::NoStream,
            options.clone(),
        )
        .await
        .unwrap();
    assert_eq!(again, first);
    // ... and after another writer appended (found by scanning).
    store
        .append::<Account>("d", deposits([4]), Expected::Any)
        .await
        .unwrap();
    let late = store
        .append_with::<Account>("d", deposits([1, 2, 3]), Expected::Version(0), options)
        .await
        .unwrap();
    assert_eq!(late, first);
    let versions: Vec<u64> = world.stored("d").await.iter().map(|(_, _, v)| *v).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    // A single event too (a plain publish, deduplicated by its id).
    let options = AppendOptions::default().id("append-2");
    let one = store
        .append_with::<Account>("d", deposits([5]), Expected::Version(4), options.clone())
        .await
        .unwrap();
    let one_again = store
        .append_with::<Account>("d", deposits([5]), Expected::Version(4), options)
        .await
        .unwrap();
    assert_eq!(one_again, one);
    assert_eq!(store.load::<Account>("d").await.unwrap().version, 5);
}

async fn an_id_reused_for_other_events_is_refused(on: Backend) {
    let store = &World::fresh(on).await.store;
    let options = AppendOptions::default().id("append-x");
    store
        .append_with::<Account>("e", deposits([1, 2]), Expected::NoStream, options.clone())
        .await
        .unwrap();
    let err = store
        .append_with::<Account>("e", deposits([3, 4]), Expected::Version(2), options)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), AppendErrorKind::IdReused { append_id } if append_id == "append-x"),
        "{err:?}"
    );
}

/// Events whose type names another aggregate.
#[derive(Default)]
struct Mislabelled;

#[derive(Serialize, Deserialize)]
enum MislabelledEvent {
    #[serde(rename = "bank.loan.granted.v1")]
    Granted,
    #[serde(rename = "granted")]
    NoVersion,
    Plain(u64, u64),
}

impl Aggregate for Mislabelled {
    const KIND: &'static str = "bank.account";
    type Event = MislabelledEvent;
    type Command = ();
    type Error = std::convert::Infallible;
    fn apply(&mut self, _: &MislabelledEvent) {}
    fn handle(&self, _: &()) -> Result<Vec<MislabelledEvent>, Self::Error> {
        Ok(vec![])
    }
}

async fn bad_appends_get_typed_errors_and_store_nothing(on: Backend) {
    let world = World::fresh(on).await;
    let store = &world.store;
    let err = store
        .append::<Account>("f", vec![], Expected::Any)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &AppendErrorKind::Empty);

    let err = store
        .append::<Account>("f", deposits(0..=MAX_APPEND as u64), Expected::Any)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &AppendErrorKind::TooMany {
            count: MAX_APPEND + 1,
            limit: MAX_APPEND
        }
    );
    // The limit itself is one atomic batch.
    let full = store
        .append::<Account>("g", deposits(1..=MAX_APPEND as u64), Expected::NoStream)
        .await
        .unwrap();
    assert_eq!(full.version, MAX_APPEND as u64);
    assert_eq!(full.sequence - full.first_sequence, MAX_APPEND as u64 - 1);

    let err = store
        .append::<Mislabelled>("f", vec![MislabelledEvent::Granted], Expected::Any)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), AppendErrorKind::WrongAggregate { event_type, .. } if event_type == "bank.loan.granted.v1"),
        "{err:?}"
    );
    for event in [MislabelledEvent::NoVersion, MislabelledEvent::Plain(1, 2)] {
        let err = store
            .append::<Mislabelled>("f", vec![event], Expected::Any)
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), AppendErrorKind::InvalidEvent { .. }),
            "{err:?}"
        );
    }
    assert!(world.stored("f").await.is_empty());
}

#[tokio::test]
async fn a_stream_without_atomic_publish_refuses_multi_event_appends_and_says_how_to_fix() {
    let server = shared_server().await;
    let client = connect(&server.url(), &unique("es"), |_| {}).await;
    let name = unique("PLAIN");
    client
        .jetstream()
        .unwrap()
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.bank.>", client.subjects().env())],
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let store = EventStore::new(client.clone(), name.clone());
    let err = store
        .append::<Account>("h", deposits([1, 2]), Expected::NoStream)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &AppendErrorKind::AtomicPublishDisabled {
            stream: name.clone()
        }
    );
    assert!(err.to_string().contains("allow_atomic_publish"), "{err}");
    assert!(stored_messages(&client, &store, "h").await.is_empty());
    // One event needs no batch.
    store
        .append::<Account>("h", deposits([1]), Expected::NoStream)
        .await
        .unwrap();
}

/// The JetStream API requests about `stream` (direct gets of the last
/// event, stream infos, consumers) that the store's client sends, as a
/// plain subscriber on another connection sees them on the server.
struct StreamRequests {
    /// The store's connection: it sends a marker after its requests.
    client: async_nats::Client,
    /// The watcher's connection, held open for its subscriptions.
    _watcher: async_nats::Client,
    requests: async_nats::Subscriber,
    markers: async_nats::Subscriber,
    marker_subject: String,
    stream: String,
}

impl StreamRequests {
    async fn watch(url: &str, client: &jetevents::client::Client, stream: &str) -> StreamRequests {
        let watcher = async_nats::connect(url).await.unwrap();
        let requests = watcher.subscribe("$JS.API.>").await.unwrap();
        let marker_subject = unique("jetevents-test.marker");
        let markers = watcher.subscribe(marker_subject.clone()).await.unwrap();
        // async-nats' flush only writes the buffer; a request's reply proves
        // the server has read the subscriptions before it (it reads a
        // connection's operations in order). The request is about no stream.
        watcher.request("$JS.API.INFO", "".into()).await.unwrap();
        let mut watch = StreamRequests {
            client: client.nats().expect("a NATS client").clone(),
            _watcher: watcher,
            requests,
            markers,
            marker_subject,
            stream: stream.to_owned(),
        };
        watch.since_last().await;
        watch
    }

    /// The requests about the stream the client sent since the last call.
    /// The server copies a message to a plain subscriber as it reads it from
    /// the sender's connection, in the order the sender wrote them: once a
    /// marker the client publishes now has reached the watcher, every
    /// request the client sent before it is in the watcher's subscription
    /// too.
    ///
    /// Pull requests (`CONSUMER.MSG.NEXT`) are left out: the ordered
    /// consumer of an earlier load can send its next pull after the load has
    /// returned, and an append never pulls (it reads with direct gets).
    async fn since_last(&mut self) -> Vec<String> {
        use futures_util::FutureExt;
        use futures_util::StreamExt;
        self.client
            .publish(self.marker_subject.clone(), "marker".into())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.markers.next())
            .await
            .expect("the marker reaches the watcher")
            .expect("the watcher's subscription is open");
        let mut about_stream = Vec::new();
        while let Some(Some(request)) = self.requests.next().now_or_never() {
            let pull = request.subject.starts_with("$JS.API.CONSUMER.MSG.NEXT.");
            if !pull && request.subject.split('.').any(|token| token == self.stream) {
                about_stream.push(request.subject.to_string());
            }
        }
        about_stream
    }
}

/// Load (or append), decide, append at that version: the store knows where
/// the aggregate stood and sends the append alone, no read of its last
/// event first. A writer it did not see still gets a typed conflict, and
/// nothing of the refused append is stored.
#[tokio::test]
async fn an_append_at_a_version_the_store_saw_reads_nothing_first() {
    let server = shared_server().await;
    let (client, store) = eventstore_support::fresh_store().await;
    let mut requests = StreamRequests::watch(&server.url(), &client, store.stream()).await;

    store
        .append::<Account>("g", deposits([1]), Expected::NoStream)
        .await
        .unwrap();
    requests.since_last().await;
    // After its own append.
    store
        .append::<Account>("g", deposits([2, 3]), Expected::Version(1))
        .await
        .unwrap();
    assert_eq!(requests.since_last().await, Vec::<String>::new());

    // After a load, by another store of the same stream (the cached view is
    // the store's, shared by its clones).
    let other = EventStore::new(client.clone(), store.stream());
    let loaded = other.load::<Account>("g").await.unwrap();
    assert_eq!(loaded.version, 3);
    requests.since_last().await;
    let appended = other
        .append::<Account>("g", deposits([4]), Expected::Version(loaded.version))
        .await
        .unwrap();
    assert_eq!(appended.version, 4);
    assert_eq!(requests.since_last().await, Vec::<String>::new());

    // `store` saw version 3, `other` appended the 4th: the server refuses
    // the stale guess and the store reads where the aggregate is.
    let err = store
        .append::<Account>("g", deposits([5, 6]), Expected::Version(3))
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err.kind()), 4);
    assert!(
        !requests.since_last().await.is_empty(),
        "the conflict is decided on a read of the last event"
    );
    assert_eq!(world_versions(&client, &store).await, [1, 2, 3, 4]);

    // A version this store never saw is looked up, as before: the
    // subscriber does see those reads.
    let fresh = EventStore::new(client.clone(), store.stream());
    requests.since_last().await;
    fresh
        .append::<Account>("g", deposits([5]), Expected::Version(4))
        .await
        .unwrap();
    assert!(!requests.since_last().await.is_empty());
    assert_eq!(world_versions(&client, &store).await, [1, 2, 3, 4, 5]);
}

async fn world_versions(client: &jetevents::client::Client, store: &EventStore) -> Vec<u64> {
    stored_messages(client, store, "g")
        .await
        .into_iter()
        .map(|(_, _, version)| version)
        .collect()
}

/// `Any` and `Exists` append after the last event the store saw, without
/// reading it first; the server still refuses a position others moved past
/// (the store then reads and appends after the actual last event), and a
/// store that saw events no longer there never appends to the emptied
/// aggregate as `Exists`.
#[tokio::test]
async fn an_append_expecting_any_or_exists_after_what_the_store_saw_reads_nothing_first() {
    let server = shared_server().await;
    let (client, store) = eventstore_support::fresh_store().await;
    let mut requests = StreamRequests::watch(&server.url(), &client, store.stream()).await;

    store
        .append::<Account>("g", deposits([1]), Expected::NoStream)
        .await
        .unwrap();
    assert_eq!(requests.since_last().await, Vec::<String>::new());
    let appended = store
        .append::<Account>("g", deposits([2]), Expected::Any)
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
    assert_eq!(requests.since_last().await, Vec::<String>::new());
    let appended = store
        .append::<Account>("g", deposits([3]), Expected::Exists)
        .await
        .unwrap();
    assert_eq!(appended.version, 3);
    assert_eq!(requests.since_last().await, Vec::<String>::new());

    // Another store appends the 4th: `store`'s guess is stale, the server
    // refuses it and the store appends after the event it then reads.
    let other = EventStore::new(client.clone(), store.stream());
    other
        .append::<Account>("g", deposits([4]), Expected::Any)
        .await
        .unwrap();
    requests.since_last().await;
    let appended = store
        .append::<Account>("g", deposits([5, 6]), Expected::Exists)
        .await
        .unwrap();
    assert_eq!((appended.first_version, appended.version), (5, 6));
    assert!(!requests.since_last().await.is_empty());
    other
        .append::<Account>("g", deposits([7]), Expected::Exists)
        .await
        .unwrap();
    let appended = store
        .append::<Account>("g", deposits([8]), Expected::Any)
        .await
        .unwrap();
    assert_eq!(appended.version, 8);
    assert_eq!(
        world_versions(&client, &store).await,
        [1, 2, 3, 4, 5, 6, 7, 8]
    );

    // The aggregate's events are purged: `store` remembers 8 events, the
    // server refuses that guess, and `Exists` does not hold any more.
    let nats = async_nats::connect(server.url()).await.unwrap();
    async_nats::jetstream::new(nats)
        .get_stream(store.stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let err = store
        .append::<Account>("g", deposits([9]), Expected::Exists)
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err.kind()), 0);
    assert_eq!(world_versions(&client, &store).await, Vec::<u64>::new());
    // `Any` starts it again at version 1.
    let appended = store
        .append::<Account>("g", deposits([9]), Expected::Any)
        .await
        .unwrap();
    assert_eq!(appended.version, 1);
    assert_eq!(world_versions(&client, &store).await, [1]);
}
