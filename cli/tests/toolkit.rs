//! `projections` and `sagas`, through the built binary, on checkpoints and
//! sagas made by the library against the test server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use jetevents::consume::HandlerError;
use jetevents::error::BoxError;
use jetevents::eventstore::projection::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use jetevents::eventstore::projection::sqlx::{self, SqliteConnection};
use jetevents::eventstore::projection::{
    Checkpoints, KvCheckpoints, Projected, Projection, ProjectionRunner, SqliteCheckpoints,
};
use jetevents::eventstore::{Aggregate, EventStore, Expected, StoreStream};
use jetevents::publish::PublishOptions;
use jetevents::saga::{Saga, Sagas, Step, Transition};
use serde::{Deserialize, Serialize};
use support::{assert_one_line_failure, came_true, json_lines, unique, World};

/// A tally: each event adds one mark under its instance.
#[derive(Default)]
struct Tally;

#[derive(Serialize, Deserialize)]
enum TallyEvent {
    #[serde(rename = "marked.v1")]
    Marked,
}

/// `Tally` takes no command that can fail.
#[derive(Debug)]
enum NoCommand {}

impl std::fmt::Display for NoCommand {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoCommand {}

impl Aggregate for Tally {
    const KIND: &'static str = "cli.tally";
    type Event = TallyEvent;
    type Command = ();
    type Error = NoCommand;
    fn apply(&mut self, _: &TallyEvent) {}
    fn handle(&self, _: &()) -> Result<Vec<TallyEvent>, NoCommand> {
        Ok(vec![TallyEvent::Marked])
    }
}

/// Marks per instance, in memory.
struct Marks;

impl Projection for Marks {
    type Aggregate = Tally;
    type Model = HashMap<String, u64>;

    async fn apply(
        &mut self,
        model: &mut HashMap<String, u64>,
        event: &Projected<Tally>,
    ) -> Result<(), BoxError> {
        *model.entry(event.key.clone()).or_default() += 1;
        Ok(())
    }

    async fn clear(&mut self, model: &mut HashMap<String, u64>) -> Result<(), BoxError> {
        model.clear();
        Ok(())
    }
}

/// The world without its catch-all stream: the event store and the saga
/// host need streams of their own on the same subjects.
async fn world_without_its_stream() -> World {
    let world = World::new().await;
    world
        .client
        .jetstream()
        .unwrap()
        .delete_stream(&world.stream)
        .await
        .unwrap();
    world
}

/// Marks as rows of a SQLite read model.
struct MarkRows;

impl Projection for MarkRows {
    type Aggregate = Tally;
    type Model = SqliteConnection;

    async fn apply(
        &mut self,
        model: &mut SqliteConnection,
        event: &Projected<Tally>,
    ) -> Result<(), BoxError> {
        sqlx::query("INSERT INTO marks (instance) VALUES (?)")
            .bind(&event.key)
            .execute(model)
            .await?;
        Ok(())
    }

    async fn clear(&mut self, model: &mut SqliteConnection) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM marks").execute(model).await?;
        Ok(())
    }
}

/// Runs `runner` until its projection has caught up with the store; its
/// checkpoint then.
async fn catch_up<P, C>(mut runner: ProjectionRunner<P, C>) -> u64
where
    P: Projection,
    C: Checkpoints<P> + 'static,
{
    let progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    assert!(
        came_true(Duration::from_secs(30), || {
            let progress = *progress.borrow();
            async move { progress.checkpoint > 0 && progress.lag() == 0 }
        })
        .await,
        "the projection did not catch up"
    );
    stop.send(()).unwrap();
    running.await.unwrap();
    let checkpoint = progress.borrow().checkpoint;
    checkpoint
}

/// A fresh event store with five marks, and its world.
async fn store_with_marks() -> (World, EventStore) {
    let world = world_without_its_stream().await;
    let store = EventStore::provision(&world.client, StoreStream::new(unique("ES"), "cli"))
        .await
        .unwrap();
    mark(&store, "a", 3).await;
    mark(&store, "b", 2).await;
    (world, store)
}

async fn mark(store: &EventStore, key: &str, times: usize) {
    let events = (0..times).map(|_| TallyEvent::Marked).collect();
    store
        .append::<Tally>(key, events, Expected::Any)
        .await
        .unwrap();
}

#[tokio::test]
async fn projections_status_and_rebuild_on_a_kv_checkpoint() {
    let (world, store) = store_with_marks().await;
    let bucket_name = unique("checkpoints");
    let bucket = world
        .client
        .jetstream()
        .unwrap()
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket_name.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    // The projection catches up, then stops; two more events arrive.
    let checkpoint = catch_up(ProjectionRunner::new(
        store.clone(),
        Marks,
        KvCheckpoints::new(bucket.clone(), "marks", HashMap::new()),
    ))
    .await;
    mark(&store, "a", 2).await;

    let status_args = [
        "projections",
        "status",
        "--bucket",
        &bucket_name,
        "--store",
        store.stream(),
        "--kind",
        "cli.tally",
    ];
    let json = json_lines(&world.ok(&[&status_args[..], &["-o", "json"]].concat()));
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["projection"], "marks");
    assert_eq!(json[0]["checkpoint"], checkpoint);
    assert_eq!(json[0]["last_sequence"], checkpoint + 2);
    assert_eq!(json[0]["lag"], 2);
    let table = world.ok(&status_args);
    assert_eq!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        [
            "marks",
            &checkpoint.to_string(),
            &(checkpoint + 2).to_string(),
            "2"
        ],
        "{table}"
    );

    let rebuilt = world.ok(&["projections", "rebuild", "marks", "--bucket", &bucket_name]);
    assert!(
        rebuilt.contains(&format!("checkpoint {checkpoint} -> 0")),
        "{rebuilt}"
    );
    let mut read = KvCheckpoints::new(bucket.clone(), "marks", HashMap::new());
    assert_eq!(
        Checkpoints::<Marks>::checkpoint(&mut read).await.unwrap(),
        0
    );

    let output = world
        .command(&[
            "projections",
            "status",
            "nope",
            "--bucket",
            &bucket_name,
            "--store",
            store.stream(),
        ])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "no projection \"nope\"");
    let output = world
        .command(&[
            "projections",
            "rebuild",
            "marks",
            "--bucket",
            "no-such-bucket",
        ])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "checkpoint bucket no-such-bucket");
}

#[tokio::test]
async fn projections_status_and_rebuild_on_a_sqlite_checkpoint() {
    let (world, store) = store_with_marks().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read.db");
    let pool = SqlitePool::connect_with(
        SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE marks (instance TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let checkpoints = SqliteCheckpoints::new(pool.clone(), "mark-rows")
        .await
        .unwrap();
    let checkpoint = catch_up(ProjectionRunner::new(store.clone(), MarkRows, checkpoints)).await;
    mark(&store, "b", 1).await;

    let path = path.to_str().unwrap();
    let json = json_lines(&world.ok(&[
        "projections",
        "status",
        "--sqlite",
        path,
        "--store",
        store.stream(),
        "--kind",
        "cli.tally",
        "-o",
        "json",
    ]));
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["projection"], "mark-rows");
    assert_eq!(json[0]["checkpoint"], checkpoint);
    assert_eq!(json[0]["lag"], 1);
    let rebuilt = world.ok(&["projections", "rebuild", "mark-rows", "--sqlite", path]);
    assert!(
        rebuilt.contains(&format!("checkpoint {checkpoint} -> 0")),
        "{rebuilt}"
    );
    let mut read = SqliteCheckpoints::new(pool, "mark-rows").await.unwrap();
    assert_eq!(
        Checkpoints::<MarkRows>::checkpoint(&mut read)
            .await
            .unwrap(),
        0
    );

    let missing = dir.path().join("missing.db");
    let output = world
        .command(&[
            "projections",
            "status",
            "--sqlite",
            missing.to_str().unwrap(),
            "--store",
            store.stream(),
        ])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "missing.db");
    assert!(!missing.exists(), "the command created a database");
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Placed {
    order: String,
}

impl jetevents::Event for Placed {
    const TYPE: &'static str = "cli.order.placed.v1";
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PaymentTimedOut {
    order: String,
}

impl jetevents::Event for PaymentTimedOut {
    const TYPE: &'static str = "cli.order.timedout.v1";
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct OrderState {
    order: String,
    stage: String,
}

async fn placed(
    event: Placed,
    _: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    let state = OrderState {
        order: event.order.clone(),
        stage: "paying".into(),
    };
    let at = chrono::Utc::now() + chrono::Duration::hours(1);
    Transition::to(state).timeout("payment", at, &PaymentTimedOut { order: event.order })
}

#[tokio::test]
async fn sagas_list_and_show_running_sagas() {
    let world = world_without_its_stream().await;
    // The saga host declares its stream, with the saga's timer subjects.
    let stream = jetevents::provision::StreamSpec::new(
        unique("ORDERS"),
        vec![format!("{}.cli.>", world.env)],
    );
    let saga = unique("order");
    let consumer = Saga::new(saga.clone())
        .start(placed)
        .consumer(&world.client, format!("{saga}-host"), &stream)
        .await
        .unwrap()
        .build()
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));
    for order in ["o-1", "o-2"] {
        world
            .client
            .publisher()
            .publish_with(
                &Placed {
                    order: order.into(),
                },
                PublishOptions::new().correlation_id(order),
            )
            .await
            .unwrap();
    }
    let sagas = Sagas::<OrderState>::open(&world.client, &saga)
        .await
        .unwrap();
    assert!(
        came_true(Duration::from_secs(30), || async {
            sagas.running().await.unwrap().len() == 2
        })
        .await,
        "the sagas did not start"
    );
    stop.send(()).unwrap();
    host.await.unwrap().unwrap();

    let listed = json_lines(&world.ok(&["sagas", "list", &saga, "-o", "json"]));
    let ids: Vec<&str> = listed
        .iter()
        .map(|s| s["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{listed:?}");
    assert!(ids.contains(&"o-1") && ids.contains(&"o-2"), "{ids:?}");
    for saga_json in &listed {
        assert_eq!(saga_json["status"], "running");
        assert_eq!(saga_json["state"]["stage"], "paying");
        assert!(saga_json["pending_timeouts"]["payment"]["at"].is_string());
    }
    let every = world.ok(&["sagas", "list"]);
    assert!(
        every.lines().filter(|l| l.starts_with(&saga)).count() == 2,
        "{every}"
    );
    let shown = world.ok(&["sagas", "show", &saga, "o-1"]);
    assert!(shown.contains("status          running"), "{shown}");
    assert!(shown.contains("timeout         payment at "), "{shown}");
    assert!(shown.contains("\"stage\": \"paying\""), "{shown}");

    let output = world
        .command(&["sagas", "list", "nosuch"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "no saga \"nosuch\"");
    let output = world
        .command(&["sagas", "show", &saga, "o-404"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "with correlation id \"o-404\"");
}
