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
