//! Projections: a SQLite read model gets every event exactly once across
//! aborted runners, one runner of two applies at a time, a rebuild
//! reproduces the model, the KV checkpoint moves by compare-and-set (each
//! case on a real nats-server and on the in-memory JetStream); the lag is
//! exported as a gauge (on the server).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use jetevents::client::Client;
use jetevents::error::BoxError;
use jetevents::eventstore::projection::{
    Checkpoints, KvCheckpoints, Lease, Projected, Projection, ProjectionErrorKind, ProjectionRunner,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod eventstore_ledger;
#[macro_use]
mod eventstore_support;
mod metrics_reader;
use eventstore_ledger::{
    assert_exactly_once, database, rows, sqlite_runner, wait_for_rows, write_events, Ledger,
    LedgerRunner,
};
use eventstore_support::support::eventually;
use eventstore_support::{
    fresh_store_with, kv_bucket, run_until_caught_up, unique, Account, AccountEvent, Backend, World,
};
use metrics_reader::{Metrics, Recorder};

on_both_backends!(
    sqlite_read_model_gets_each_event_once_across_aborted_runners,
    one_of_two_runners_applies_and_the_standby_takes_over,
    rebuild_reproduces_the_read_model,
    kv_checkpoint_skips_applied_events_and_refuses_a_stale_writer,
);

const WAIT: Duration = Duration::from_secs(20);

type Runner = LedgerRunner;

/// Runs `runner` in a task until the sender is dropped or sent to.
fn spawn(mut runner: Runner) -> (JoinHandle<Runner>, oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        runner
    });
    (task, stop)
}

async fn sqlite_read_model_gets_each_event_once_across_aborted_runners(on: Backend) {
    let World { store, .. } = World::fresh(on).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = database(dir.path()).await;
    let events = write_events(&store, 6, 40).await;

    // Abort the runner in the middle of a batch, at a different place each
    // time: its uncommitted rows must vanish with the checkpoint unmoved.
    for round in 0..8 {
        let (hung, mut hangs) = mpsc::unbounded_channel();
        let mut ledger = Ledger::new("a");
        ledger.hang_at = Some((3 + round * 5, hung));
        let (task, _stop) = spawn(sqlite_runner(&store, &pool, ledger).await);
        tokio::time::timeout(WAIT, hangs.recv()).await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_exactly_once(&rows(&pool).await, rows(&pool).await.len());
    }

    let (task, stop) = spawn(sqlite_runner(&store, &pool, Ledger::new("a")).await);
    wait_for_rows(&pool, events).await;
    stop.send(()).unwrap();
    let mut runner = task.await.unwrap();
    assert_exactly_once(&rows(&pool).await, events);
    let progress = runner.lag().await.unwrap();
    assert_eq!(progress.lag(), 0);
    assert_eq!(progress.checkpoint, progress.last_sequence);
}

async fn one_of_two_runners_applies_and_the_standby_takes_over(on: Backend) {
    let World { client, store, .. } = World::fresh(on).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = database(dir.path()).await;
    let leases = unique("lease");
    let ttl = Duration::from_secs(1);
    let client = &client;
    let lease = |name| async move { Lease::provision(client, name, "ledger", ttl).await.unwrap() };

    let first = sqlite_runner(&store, &pool, Ledger::new("a"))
        .await
        .with_lease(lease(&leases).await);
    let first_progress = first.progress();
    let (first_task, _first_stop) = spawn(first);
    eventually("the first runner to hold the lease", WAIT, || async {
        first_progress.borrow().active
    })
    .await;
    let second = sqlite_runner(&store, &pool, Ledger::new("b"))
        .await
        .with_lease(lease(&leases).await);
    let second_progress = second.progress();
    let (second_task, second_stop) = spawn(second);

    let mut events = write_events(&store, 3, 20).await;
    wait_for_rows(&pool, events).await;
    let before = rows(&pool).await;
    assert!(
        before.iter().all(|row| row.3 == "a"),
        "the standby applied events"
    );
    assert!(!second_progress.borrow().active);

    // The active runner dies without releasing its lease.
    first_task.abort();
    let _ = first_task.await;
    eventually("the standby to take over", WAIT, || async {
        second_progress.borrow().active
    })
    .await;
    events += write_events(&store, 2, 20).await;
    wait_for_rows(&pool, events).await;
    let after = rows(&pool).await;
    assert_exactly_once(&after, events);
    assert!(after[before.len()..].iter().all(|row| row.3 == "b"));
    second_stop.send(()).unwrap();
    second_task.await.unwrap();
}

async fn rebuild_reproduces_the_read_model(on: Backend) {
    let World { store, .. } = World::fresh(on).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = database(dir.path()).await;
    let events = write_events(&store, 4, 25).await;

    let mut runner = sqlite_runner(&store, &pool, Ledger::new("a")).await;
    assert_eq!(runner.lag().await.unwrap().lag() as usize, events);
    let (task, stop) = spawn(runner);
    wait_for_rows(&pool, events).await;
    stop.send(()).unwrap();
    let mut runner = task.await.unwrap();
    let built = rows(&pool).await;

    runner.rebuild().await.unwrap();
    assert!(rows(&pool).await.is_empty());
    let progress = runner.lag().await.unwrap();
    assert_eq!((progress.checkpoint, progress.lag() as usize), (0, events));

    let (task, stop) = spawn(runner);
    wait_for_rows(&pool, events).await;
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(rows(&pool).await, built);
}

/// Deposits per account, in memory.
#[derive(Debug)]
struct Totals;

impl Projection for Totals {
    type Aggregate = Account;
    type Model = HashMap<String, u64>;

    async fn apply(
        &mut self,
        model: &mut HashMap<String, u64>,
        event: &Projected<Account>,
    ) -> Result<(), BoxError> {
        if let AccountEvent::Deposited { amount } = event.event {
            *model.entry(event.key.clone()).or_default() += amount;
        }
        Ok(())
    }

    async fn clear(&mut self, model: &mut HashMap<String, u64>) -> Result<(), BoxError> {
        model.clear();
        Ok(())
    }
}

async fn kv_checkpoint_skips_applied_events_and_refuses_a_stale_writer(on: Backend) {
    let World { client, store, .. } = World::fresh(on).await;
    write_events(&store, 2, 10).await;
    let bucket = unique("checkpoints");
    let checkpoints = totals_in(&client, &bucket).await;
    let runner = ProjectionRunner::new(store.clone(), Totals, checkpoints);
    let progress = runner.progress();
    let runner = run_until_caught_up(runner).await;
    let expected: u64 = (1..=10).sum();
    assert_eq!(runner.checkpoints().model().get("acc-0"), Some(&expected));
    assert_eq!(runner.checkpoints().model().get("acc-1"), Some(&expected));

    // A writer that read the checkpoint before another moved it is refused;
    // events at or below the checkpoint are skipped.
    let at = progress.borrow().checkpoint;
    let mut stale = totals_in(&client, &bucket).await;
    let mut fresh = totals_in(&client, &bucket).await;
    assert_eq!(
        Checkpoints::<Totals>::checkpoint(&mut stale).await.unwrap(),
        at
    );
    assert_eq!(
        Checkpoints::<Totals>::checkpoint(&mut fresh).await.unwrap(),
        at
    );
    let old = deposit_at(at, "acc-0", 1_000);
    let new = deposit_at(at + 1, "acc-0", 5);
    assert_eq!(
        fresh
            .commit(&mut Totals, &[old.clone(), new.clone()])
            .await
            .unwrap(),
        at + 1
    );
    assert_eq!(fresh.model().get("acc-0"), Some(&5));
    let refused = stale.commit(&mut Totals, &[new]).await.unwrap_err();
    assert_eq!(refused.kind(), &ProjectionErrorKind::CheckpointMoved);
}

/// The `totals` checkpoint in `bucket` of `client`, with an empty model.
async fn totals_in(client: &Client, bucket: &str) -> KvCheckpoints<HashMap<String, u64>> {
    KvCheckpoints::provision(client, bucket, "totals", HashMap::new())
        .await
        .unwrap()
}

fn deposit_at(sequence: u64, key: &str, amount: u64) -> Projected<Account> {
    Projected::new(sequence, key, 1, AccountEvent::Deposited { amount })
}

/// The `jetevents.projection.lag` gauge of projection `name`.
fn exported_lag(recorder: &Recorder, name: &str) -> Option<u64> {
    let totals = recorder.totals();
    let with = [opentelemetry::KeyValue::new(
        "jetevents.projection.name",
        name.to_owned(),
    )];
    Metrics(&totals).gauge_u64("jetevents.projection.lag", &with)
}

#[tokio::test]
async fn the_lag_is_exported_as_a_gauge_per_projection() {
    let recorder = Recorder::new();
    let meter = recorder.meter();
    let (client, store) =
        fresh_store_with(Default::default(), |config| config.meter = Some(meter)).await;
    let stored = write_events(&store, 1, 5).await as u64;
    let runner_of = |name: &str, bucket| {
        let checkpoints = KvCheckpoints::new(bucket, name, HashMap::new());
        ProjectionRunner::new(store.clone(), Totals, checkpoints).name(name)
    };
    let mut behind = runner_of("behind", kv_bucket(&client, "checkpoints").await);
    assert_eq!(behind.lag().await.unwrap().lag(), stored);
    assert_eq!(exported_lag(&recorder, "behind"), Some(stored));

    let current = runner_of("current", kv_bucket(&client, "checkpoints").await);
    run_until_caught_up(current).await;
    assert_eq!(exported_lag(&recorder, "current"), Some(0));
    assert_eq!(exported_lag(&recorder, "behind"), Some(stored));
}
