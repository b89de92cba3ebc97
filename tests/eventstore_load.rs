//! Loading aggregates: replay, snapshots, and snapshot + tail equal to a
//! full replay; each case on a real nats-server and on the in-memory
//! JetStream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::eventstore::{Aggregate, EventStore, Expected, Position, SnapshotPolicy, Snapshots};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[macro_use]
mod eventstore_support;
use eventstore_support::{deposits, unique, Account, AccountCommand, AccountEvent, Backend, World};

on_both_backends!(
    a_snapshot_of_the_current_schema_is_used_and_an_outdated_one_ignored,
    an_aggregate_without_events_loads_as_its_default,
    a_snapshot_saved_late_never_replaces_a_newer_one,
    concurrent_snapshot_saves_in_any_order_keep_the_newest,
    a_snapshot_the_events_do_not_continue_is_not_used,
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
    snapshots
        .save::<OldAccount>("k", &OldAccount(marked.clone()), 2, at_two)
        .await
        .unwrap();
    let loaded = store.load::<Account>("k").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (4, 4));
    assert_eq!(loaded.state.amounts, [1, 2, 3, 4]);

    snapshots
        .save::<Account>("k", &marked, 2, at_two)
        .await
        .unwrap();
    let loaded = store.load::<Account>("k").await.unwrap();
    assert_eq!((loaded.version, loaded.replayed), (4, 2));
    assert_eq!(loaded.state.amounts, [1000, 3, 4]);
    assert_eq!(loaded.sequence, appended.sequence);
    // The store without snapshots replays everything.
    assert_eq!(plain.load::<Account>("k").await.unwrap().replayed, 4);
}

/// An account with deposits 1..=20 under `key`; the stream sequence of
/// each version (index 0: version 1).
async fn twenty_deposits(store: &EventStore, key: &str) -> Vec<u64> {
    let appended = store
        .append::<Account>(key, deposits(1..=20), Expected::NoStream)
        .await
        .unwrap();
    (appended.first_sequence..=appended.sequence).collect()
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
    let sequences = twenty_deposits(&store, "late").await;
    let save = |version: u64, state: Account| {
        let snapshots = snapshots.clone();
        let sequence = sequences[version as usize - 1];
        async move {
            snapshots
                .save("late", &state, version, sequence)
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
        .save("late", &at_21.state, 21, at_21.sequence)
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
    let sequences = twenty_deposits(&store, "racing").await;
    // Newest first, all at once: with last-write-wins an older one lands
    // last.
    let tasks: Vec<_> = (1..=20u64)
        .rev()
        .map(|version| {
            let snapshots = snapshots.clone();
            let sequence = sequences[version as usize - 1];
            tokio::spawn(async move {
                snapshots
                    .save("racing", &after_deposits(version), version, sequence)
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
    let sequences = twenty_deposits(&store, "reset").await;
    snapshots
        .save("reset", &after_deposits(20), 20, sequences[19])
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

async fn an_aggregate_without_events_loads_as_its_default(on: Backend) {
    let store = &World::fresh(on).await.store;
    let loaded = store.load::<Account>("nobody").await.unwrap();
    assert_eq!(loaded.state, Account::default());
    assert_eq!(loaded.position(), Position::default());
}

/// Appends `chunks` of amounts, snapshots the state after `snapshot_at`
/// events (folded here, not loaded), and loads with and without snapshots.
async fn snapshot_and_tail_against_full_replay(
    store: &EventStore,
    snapshots: &Snapshots,
    chunks: Vec<Vec<u64>>,
    snapshot_at: usize,
) {
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
        snapshots
            .save(&key, &state, snapshot_at as u64, sequences[snapshot_at - 1])
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
    assert_eq!(full.state.amounts, amounts);
    assert_eq!(with_snapshot.replayed, (amounts.len() - snapshot_at) as u64);
}

/// One property case on `on`, in a fresh world.
fn snapshot_plus_tail_on(on: Backend, chunks: Vec<Vec<u64>>, snapshot_at: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let world = World::fresh(on).await;
        let snapshots = world.snapshots(SnapshotPolicy::Manual).await;
        snapshot_and_tail_against_full_replay(&world.store, &snapshots, chunks, snapshot_at).await;
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
