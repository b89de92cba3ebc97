//! Loading aggregates: replay, snapshots, and snapshot + tail equal to a
//! full replay; each case on a real nats-server and on the in-memory
//! JetStream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::eventstore::{Aggregate, EventStore, Expected, Position, SnapshotPolicy, Snapshots};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[macro_use]
mod eventstore_support;
use eventstore_support::{
    deposits, kv_bucket, unique, Account, AccountCommand, AccountEvent, Backend, World,
};

on_both_backends!(
    a_snapshot_of_the_current_schema_is_used_and_an_outdated_one_ignored,
    an_aggregate_without_events_loads_as_its_default,
    a_snapshot_saved_late_never_replaces_a_newer_one,
    concurrent_snapshot_saves_in_any_order_keep_the_newest,
    a_snapshot_the_events_do_not_continue_is_not_used,
    a_snapshot_at_the_tip_whose_event_was_replaced_is_not_used,
    a_snapshot_behind_the_tip_whose_event_was_replaced_is_not_used,
);

/// `Account` as an older release stored it: same events, another snapshot
/// schema.
#[derive(Default, Serialize, Deserialize)]
#[serde(transparent)]
struct OldAccount(Account);

impl Aggregate for OldAccount {
    const KIND: &'static str = Account::KIND;
    const SNAPSHOT_SCHEMA: u32 = 0;
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = <Account as Aggregate>::Error;
    fn apply(&mut self, event: &AccountEvent) {
        self.0.apply(event)
    }
    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Self::Error> {
        self.0.handle(command)
    }
}

async fn a_snapshot_of_the_current_schema_is_used_and_an_outdated_one_ignored(on: Backend) {
    let world = World::fresh(on).await;
    let plain = &world.store;
    let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
    let store = plain.clone().with_snapshots(snapshots.clone());
    let appended = store
        .append::<Account>("k", deposits([1, 2, 3, 4]), Expected::NoStream)
        .await
        .unwrap();
    // A state no replay produces, at version 2: whoever reads it shows it.
    let marked = Account {
        open: true,
        balance: 1000,
        amounts: vec![1000],
    };
    let at_two = appended.first_sequence + 1;
    let id_two = world.event_id_at(at_two).await;
    snapshots
        .save::<OldAccount>("k", &OldAccount(marked.clone()), 2, at_two, &id_two)
        .await
        .unwrap();
    let loaded = store.load::<Account>("k").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (4, 4));
    assert_eq!(loaded.state.amounts, [1, 2, 3, 4]);

    snapshots
        .save::<Account>("k", &marked, 2, at_two, &id_two)
        .await
        .unwrap();
    let loaded = store.load::<Account>("k").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (4, 2));
    assert_eq!(loaded.state.amounts, [1000, 3, 4]);
    assert_eq!(loaded.sequence, appended.sequence);
    // The store without snapshots replays everything.
    assert_eq!(plain.load::<Account>("k").await.unwrap().replayed, 4);
}

/// An account with deposits 1..=20 under `key`; the stream sequence and
/// event id of each version (index 0: version 1).
async fn twenty_deposits(world: &World, store: &EventStore, key: &str) -> Vec<(u64, String)> {
    let appended = store
        .append::<Account>(key, deposits(1..=20), Expected::NoStream)
        .await
        .unwrap();
    let mut events = Vec::new();
    for sequence in appended.first_sequence..=appended.sequence {
        events.push((sequence, world.event_id_at(sequence).await));
    }
    events
}

/// The account after the first `version` deposits of [`twenty_deposits`].
fn after_deposits(version: u64) -> Account {
    let mut state = Account::default();
    for amount in 1..=version {
        state.apply(&AccountEvent::Deposited { amount });
    }
    state
}

async fn a_snapshot_saved_late_never_replaces_a_newer_one(on: Backend) {
    let world = World::fresh(on).await;
    let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
    let store = world.store.clone().with_snapshots(snapshots.clone());
    let events = twenty_deposits(&world, &store, "late").await;
    let save = |version: u64, state: Account| {
        let snapshots = snapshots.clone();
        let (sequence, id) = events[version as usize - 1].clone();
        async move {
            snapshots
                .save("late", &state, version, sequence, &id)
                .await
                .unwrap()
        }
    };
    save(20, after_deposits(20)).await;
    // The writer that made version 10 due saves last; a caller's explicit
    // save of an older state is kept out the same way.
    save(10, after_deposits(10)).await;
    let loaded = store.load::<Account>("late").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (20, 0));
    assert_eq!(loaded.state, after_deposits(20));
    // Nor does another state at the same version.
    let marked = Account {
        open: true,
        balance: 1000,
        amounts: vec![1000],
    };
    save(20, marked).await;
    let loaded = store.load::<Account>("late").await.unwrap();
    assert_eq!(loaded.state, after_deposits(20));
    // A newer one does.
    store
        .append::<Account>("late", deposits([21]), Expected::Version(20))
        .await
        .unwrap();
    let at_21 = store.load::<Account>("late").await.unwrap();
    assert_eq!(at_21.replayed, 1);
    snapshots
        .save(
            "late",
            &at_21.state,
            21,
            at_21.sequence,
            at_21.last_event_id.as_deref().unwrap(),
        )
        .await
        .unwrap();
    let loaded = store.load::<Account>("late").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (21, 0));
    assert_eq!(loaded.state, at_21.state);
}

async fn concurrent_snapshot_saves_in_any_order_keep_the_newest(on: Backend) {
    let world = World::fresh(on).await;
    let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
    let store = world.store.clone().with_snapshots(snapshots.clone());
    let events = twenty_deposits(&world, &store, "racing").await;
    // Newest first, all at once: with last-write-wins an older one lands
    // last.
    let tasks: Vec<_> = (1..=20u64)
        .rev()
        .map(|version| {
            let snapshots = snapshots.clone();
            let (sequence, id) = events[version as usize - 1].clone();
            tokio::spawn(async move {
                snapshots
                    .save("racing", &after_deposits(version), version, sequence, &id)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let loaded = store.load::<Account>("racing").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (20, 0));
    assert_eq!(loaded.state, after_deposits(20));
}

async fn a_snapshot_the_events_do_not_continue_is_not_used(on: Backend) {
    let world = World::fresh(on).await;
    let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
    let store = world.store.clone().with_snapshots(snapshots.clone());
    let events = twenty_deposits(&world, &store, "reset").await;
    let (sequence, id) = &events[19];
    snapshots
        .save("reset", &after_deposits(20), 20, *sequence, id)
        .await
        .unwrap();
    // The stream is recreated; the snapshot bucket stays.
    let store = world.recreate_stream().await.with_snapshots(snapshots);
    let loaded = store.load::<Account>("reset").await.unwrap();
    assert_eq!(loaded.state, Account::default());
    assert_eq!(loaded.position(), Position::default());

    // Ahead of the aggregate's last event: not used.
    store
        .append::<Account>("reset", deposits([100, 200, 300]), Expected::NoStream)
        .await
        .unwrap();
    let loaded = store.load::<Account>("reset").await.unwrap();
    assert_eq!(loaded.state.amounts, [100, 200, 300]);
    assert_eq!((loaded.version, loaded.replayed), (3, 3));

    // Past it, with other aggregates' events between: the event after the
    // snapshot's sequence is version 4, not 21.
    store
        .append::<Account>("someone-else", deposits(1..=30), Expected::NoStream)
        .await
        .unwrap();
    store
        .append::<Account>("reset", deposits(4..=25), Expected::Version(3))
        .await
        .unwrap();
    let loaded = store.load::<Account>("reset").await.unwrap();
    let mut amounts = vec![100, 200, 300];
    amounts.extend(4..=25);
    assert_eq!(loaded.state.amounts, amounts);
    assert_eq!((loaded.version, loaded.replayed), (25, 25));
}

/// A store whose snapshot of `key` ends on an event that is gone: 5
/// deposits 1..=5 snapshotted at version 5, then the stream recreated (the
/// bucket kept) and `key` written again with deposits 10, 20, 30, 40, 50.
/// The aggregate's event at the snapshot's sequence again has version 5, but
/// it is another event (another id and amount).
async fn a_replaced_snapshot_event(world: &World, key: &str) -> EventStore {
    let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
    let store = world.store.clone().with_snapshots(snapshots.clone());
    store
        .append::<Account>(key, deposits(1..=5), Expected::NoStream)
        .await
        .unwrap();
    let at_five = store.load::<Account>(key).await.unwrap();
    let snapshot_id = at_five.last_event_id.clone().unwrap();
    snapshots
        .save(
            key,
            &at_five.state,
            at_five.version,
            at_five.sequence,
            &snapshot_id,
        )
        .await
        .unwrap();
    assert_eq!(store.load::<Account>(key).await.unwrap().replayed, 0);

    let store = world.recreate_stream().await.with_snapshots(snapshots);
    store
        .append::<Account>(key, deposits([10, 20, 30, 40, 50]), Expected::NoStream)
        .await
        .unwrap();
    // The case the version alone does not tell apart.
    let now_at_snapshot = world
        .stored(key)
        .await
        .into_iter()
        .find(|(sequence, _, _)| *sequence == at_five.sequence)
        .unwrap();
    assert_eq!(now_at_snapshot.2, 5);
    assert_ne!(world.event_id_at(at_five.sequence).await, snapshot_id);
    store
}

/// The account after deposits of `amounts`, in order.
fn deposited(amounts: &[u64]) -> Account {
    let mut state = Account::default();
    for &amount in amounts {
        state.apply(&AccountEvent::Deposited { amount });
    }
    state
}

async fn a_snapshot_at_the_tip_whose_event_was_replaced_is_not_used(on: Backend) {
    let world = World::fresh(on).await;
    let store = a_replaced_snapshot_event(&world, "replaced").await;
    let loaded = store.load::<Account>("replaced").await.unwrap();
    assert_eq!(loaded.state, deposited(&[10, 20, 30, 40, 50]));
    assert_eq!((loaded.version, loaded.replayed), (5, 5));
    let tip_id = world.event_id_at(loaded.sequence).await;
    assert_eq!(loaded.last_event_id, Some(tip_id));
}

async fn a_snapshot_behind_the_tip_whose_event_was_replaced_is_not_used(on: Backend) {
    let world = World::fresh(on).await;
    let store = a_replaced_snapshot_event(&world, "replaced").await;
    // The events after the snapshot's sequence carry exactly the next
    // versions.
    store
        .append::<Account>("replaced", deposits([60, 70]), Expected::Version(5))
        .await
        .unwrap();
    let loaded = store.load::<Account>("replaced").await.unwrap();
    assert_eq!(loaded.state, deposited(&[10, 20, 30, 40, 50, 60, 70]));
    assert_eq!((loaded.version, loaded.replayed), (7, 7));
}

/// A snapshot whose own event was deleted (alone, as a retention limit
/// would) is used when the events after it carry the next versions: there
/// is nothing to check its id against, and without it the aggregate could
/// not be loaded at all (a full replay stops at the gap). On the server:
/// the in-memory JetStream deletes no single message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_event_was_deleted_is_used_when_the_events_continue_it() {
    let world = World::fresh(Backend::Nats).await;
    let bucket = kv_bucket(&world.client, "snap").await;
    let snapshots = Snapshots::new(bucket, SnapshotPolicy::Manual);
    let store = world.store.clone().with_snapshots(snapshots.clone());
    let appended = store
        .append::<Account>("pruned", deposits(1..=5), Expected::NoStream)
        .await
        .unwrap();
    let loaded = store.load::<Account>("pruned").await.unwrap();
    let id = loaded.last_event_id.clone().unwrap();
    snapshots
        .save(
            "pruned",
            &loaded.state,
            loaded.version,
            loaded.sequence,
            &id,
        )
        .await
        .unwrap();
    store
        .append::<Account>("pruned", deposits([6, 7]), Expected::Version(5))
        .await
        .unwrap();
    let jetstream = world.client.jetstream().unwrap();
    let stream = jetstream.get_stream(world.store.stream()).await.unwrap();
    assert!(stream.delete_message(appended.sequence).await.unwrap());

    let loaded = store.load::<Account>("pruned").await.unwrap();
    assert_eq!(loaded.state, deposited(&[1, 2, 3, 4, 5, 6, 7]));
    assert_eq!((loaded.version, loaded.replayed), (7, 2));
}

/// A snapshot as code before the event id was recorded wrote it (no
/// `event_id`), of a state no replay produces, at `version`/`sequence`.
fn snapshot_without_event_id(version: u64, sequence: u64) -> bytes::Bytes {
    let marked = serde_json::json!({
        "schema": Account::SNAPSHOT_SCHEMA,
        "version": version,
        "sequence": sequence,
        "state": { "open": false, "balance": 1000, "amounts": [1000] },
    });
    serde_json::to_vec(&marked).unwrap().into()
}

/// The snapshot bucket's key of the account `key`: the kind, then the key
/// in hex.
fn snapshot_key(key: &str) -> String {
    let hex: String = key.bytes().map(|byte| format!("{byte:02x}")).collect();
    format!("{}.{hex}", Account::KIND)
}

/// Only on the server: the in-memory JetStream's buckets take no bytes
/// from outside the crate (the parse is unit-tested in `snapshot.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_without_an_event_id_still_loads() {
    let world = World::fresh(Backend::Nats).await;
    let bucket = kv_bucket(&world.client, "snap").await;
    let store = world
        .store
        .clone()
        .with_snapshots(Snapshots::new(bucket.clone(), SnapshotPolicy::Manual));
    let appended = store
        .append::<Account>("old", deposits(1..=5), Expected::NoStream)
        .await
        .unwrap();
    let tip_id = world.event_id_at(appended.sequence).await;

    // Behind the tip, the events continuing it.
    let at_three = appended.first_sequence + 2;
    bucket
        .put(snapshot_key("old"), snapshot_without_event_id(3, at_three))
        .await
        .unwrap();
    let loaded = store.load::<Account>("old").await.unwrap();
    assert_eq!(loaded.state, deposited(&[1000, 4, 5]));
    assert_eq!((loaded.version, loaded.replayed), (5, 2));
    assert_eq!(loaded.last_event_id.as_deref(), Some(tip_id.as_str()));

    // At the tip.
    bucket
        .put(
            snapshot_key("old"),
            snapshot_without_event_id(5, appended.sequence),
        )
        .await
        .unwrap();
    let loaded = store.load::<Account>("old").await.unwrap();
    assert_eq!(loaded.state, deposited(&[1000]));
    assert_eq!((loaded.version, loaded.replayed), (5, 0));
    assert_eq!(loaded.last_event_id, Some(tip_id));
}

async fn an_aggregate_without_events_loads_as_its_default(on: Backend) {
    let store = &World::fresh(on).await.store;
    let loaded = store.load::<Account>("nobody").await.unwrap();
    assert_eq!(loaded.state, Account::default());
    assert_eq!(loaded.position(), Position::default());
}

/// Appends `chunks` of amounts, snapshots the state after `snapshot_at`
/// events (folded here, not loaded), and loads with and without snapshots.
async fn snapshot_and_tail_against_full_replay(
    world: &World,
    snapshots: &Snapshots,
    chunks: Vec<Vec<u64>>,
    snapshot_at: usize,
) {
    let store = &world.store;
    let key = unique("p");
    let mut sequences = Vec::new();
    for chunk in &chunks {
        let appended = store
            .append::<Account>(&key, deposits(chunk.iter().copied()), Expected::Any)
            .await
            .unwrap();
        sequences.extend(appended.first_sequence..=appended.sequence);
    }
    let amounts: Vec<u64> = chunks.concat();
    let snapshot_at = snapshot_at % (amounts.len() + 1);
    if snapshot_at > 0 {
        let mut state = Account::default();
        for amount in &amounts[..snapshot_at] {
            state.apply(&AccountEvent::Deposited { amount: *amount });
        }
        let sequence = sequences[snapshot_at - 1];
        let id = world.event_id_at(sequence).await;
        snapshots
            .save(&key, &state, snapshot_at as u64, sequence, &id)
            .await
            .unwrap();
    }
    let with_snapshot = store
        .clone()
        .with_snapshots(snapshots.clone())
        .load::<Account>(&key)
        .await
        .unwrap();
    let full = store.load::<Account>(&key).await.unwrap();
    assert_eq!(with_snapshot.state, full.state);
    assert_eq!(with_snapshot.position(), full.position());
    assert_eq!(with_snapshot.last_event_id, full.last_event_id);
    let last_id = match full.sequence {
        0 => None,
        sequence => Some(world.event_id_at(sequence).await),
    };
    assert_eq!(full.last_event_id, last_id);
    assert_eq!(full.state.amounts, amounts);
    assert_eq!(with_snapshot.replayed, (amounts.len() - snapshot_at) as u64);
}

/// One property case on `on`, in a fresh world.
fn snapshot_plus_tail_on(on: Backend, chunks: Vec<Vec<u64>>, snapshot_at: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let world = World::fresh(on).await;
        let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
        snapshot_and_tail_against_full_replay(&world, &snapshots, chunks, snapshot_at).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn snapshot_plus_tail_equals_full_replay_on_nats(
        chunks in prop::collection::vec(prop::collection::vec(1u64..1000, 1..12), 1..6),
        snapshot_at in 0usize..80,
    ) {
        snapshot_plus_tail_on(Backend::Nats, chunks, snapshot_at);
    }

    #[test]
    fn snapshot_plus_tail_equals_full_replay_in_memory(
        chunks in prop::collection::vec(prop::collection::vec(1u64..1000, 1..12), 1..6),
        snapshot_at in 0usize..80,
    ) {
        snapshot_plus_tail_on(Backend::Memory, chunks, snapshot_at);
    }
}
