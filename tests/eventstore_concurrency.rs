//! Concurrent writers on one aggregate, and command handling that retries
//! when overtaken: each case on a real nats-server and on the in-memory
//! JetStream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use async_nats::jetstream::stream::StorageType;
use jetevents::eventstore::{
    AppendErrorKind, Appended, CommandErrorKind, Expected, SnapshotPolicy,
};

#[macro_use]
mod eventstore_support;
use eventstore_support::{deposits, Account, AccountCommand, Backend, World};

on_both_backends!(
    concurrent_writers_win_each_version_once_without_gaps_or_interleaving,
    commands_retry_when_overtaken_and_every_deposit_lands_once,
);

const WRITERS: u64 = 4;
const APPENDS: usize = 1_000;
const EVENTS_PER_APPEND: u64 = 10;

/// The amount of event `index` of a writer's `append`: each event names
/// who wrote it, in which append and where in it.
fn amount(writer: u64, append: u64, index: u64) -> u64 {
    writer * 1_000_000_000 + append * 100 + index
}

async fn concurrent_writers_win_each_version_once_without_gaps_or_interleaving(on: Backend) {
    // In memory: a thousand file-staged batches take long on a busy machine,
    // and the atomicity under test is the server's either way.
    let world = World::fresh_in(on, StorageType::Memory).await;
    let store = &world.store;
    let won = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        let won = won.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<(u64, Appended)> = Vec::new();
            let mut conflicts = 0u64;
            let mut expected = 0;
            let mut append = 0;
            while won.load(std::sync::atomic::Ordering::Relaxed) < APPENDS {
                let events = deposits((0..EVENTS_PER_APPEND).map(|i| amount(writer, append, i)));
                match store
                    .append::<Account>("shared", events, Expected::Version(expected))
                    .await
                {
                    Ok(appended) => {
                        assert_eq!(appended.first_version, expected + 1);
                        expected = appended.version;
                        mine.push((append, appended));
                        append += 1;
                        won.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(err) => match err.kind() {
                        AppendErrorKind::Conflict { actual, .. } => {
                            assert!(*actual > expected, "a conflict moves forward");
                            conflicts += 1;
                            expected = *actual;
                        }
                        other => panic!("writer {writer}: {other:?}: {err}"),
                    },
                }
            }
            (writer, mine, conflicts)
        }));
    }
    let mut by_version = BTreeMap::new();
    let mut conflicts = 0;
    for task in tasks {
        let (writer, mine, lost) = task.await.unwrap();
        conflicts += lost;
        for (append, appended) in mine {
            // Exactly one writer won each version.
            let previous = by_version.insert(appended.first_version, (writer, append, appended));
            assert!(previous.is_none());
        }
    }
    assert!(by_version.len() >= APPENDS);
    assert!(conflicts > 0, "the writers never raced: nothing was tested");

    let stored = world.stored("shared").await;
    let total = by_version.len() as u64 * EVENTS_PER_APPEND;
    let versions: Vec<u64> = stored.iter().map(|(_, _, version)| *version).collect();
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "versions have gaps"
    );
    let loaded = store.load::<Account>("shared").await.unwrap();
    assert_eq!(loaded.version, total);
    // Each append's ten events sit together, in order, where its ack said.
    let mut next_version = 1;
    for (first_version, (writer, append, appended)) in &by_version {
        assert_eq!(*first_version, next_version);
        let at = (*first_version - 1) as usize;
        let written: Vec<u64> = (0..EVENTS_PER_APPEND)
            .map(|i| amount(*writer, *append, i))
            .collect();
        assert_eq!(
            loaded.state.amounts[at..at + EVENTS_PER_APPEND as usize],
            written[..]
        );
        assert_eq!(stored[at].0, appended.first_sequence);
        assert_eq!(
            stored[at + EVENTS_PER_APPEND as usize - 1].0,
            appended.sequence
        );
        next_version = appended.version + 1;
    }
}

/// The amount writer `writer` deposits as its `n`th command of round `round`:
/// distinct for every command.
fn deposit(round: u64, writer: u64, n: u64) -> u64 {
    round * 10_000 + writer * 100 + n
}

async fn commands_retry_when_overtaken_and_every_deposit_lands_once(on: Backend) {
    let world = World::fresh(on).await;
    let snapshots = world.snapshots(SnapshotPolicy::EveryEvents(10)).await;
    let store = world.store.clone().with_snapshots(snapshots);
    let err = store
        .execute::<Account>("acc", &AccountCommand::Deposit(vec![1]), 5)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CommandErrorKind::Refused(_)),
        "{err:?}"
    );
    let opened = store
        .execute::<Account>("acc", &AccountCommand::Open, 5)
        .await
        .unwrap();
    assert_eq!(opened.version, 1);
    // Opening again decides nothing.
    let again = store
        .execute::<Account>("acc", &AccountCommand::Open, 5)
        .await
        .unwrap();
    assert_eq!((again.version, again.appended), (1, None));

    // Four writers race on one account. Whether two of them meet depends
    // on the scheduler: on the in-memory backend a command runs without
    // waiting, so on a busy machine one round may run writer after writer.
    // More rounds then, until a command was overtaken (at most eight).
    let mut retried = 0;
    let mut rounds = 0u64;
    while retried == 0 && rounds < 8 {
        let round = rounds;
        let mut tasks = Vec::new();
        for writer in 0..4u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut retried = 0;
                for n in 0..25u64 {
                    let command = AccountCommand::Deposit(vec![deposit(round, writer, n), 1]);
                    let executed = store
                        .execute::<Account>("acc", &command, 100)
                        .await
                        .unwrap();
                    retried += executed.attempts - 1;
                }
                retried
            }));
        }
        for task in tasks {
            retried += task.await.unwrap();
        }
        rounds += 1;
    }
    assert!(retried > 0, "the commands never raced: nothing was tested");
    let loaded = store.load::<Account>("acc").await.unwrap();
    assert_eq!(loaded.version, 1 + rounds * 4 * 25 * 2);
    let mut amounts = loaded.state.amounts.clone();
    amounts.sort_unstable();
    let mut expected: Vec<u64> = (0..rounds)
        .flat_map(|round| {
            (0..4u64).flat_map(move |w| (0..25u64).flat_map(move |n| [deposit(round, w, n), 1]))
        })
        .collect();
    expected.sort_unstable();
    assert_eq!(amounts, expected);
    // Snapshots were taken and the load started from one. Every command
    // saved the snapshot its append made due before returning, and a save
    // never replaces a newer one whatever order they land in: the snapshot
    // stored is at or past the last mark of 10 the account crossed, so
    // fewer than 10 events are replayed.
    assert!(loaded.replayed < 10, "replayed {}", loaded.replayed);
    let all = world.stored("acc").await;
    assert_eq!(all.len() as u64, loaded.version);
    assert!(matches!(
        all.first(),
        Some((_, subject, 1)) if subject.contains(".bank.account.opened.v1.")
    ));
}
