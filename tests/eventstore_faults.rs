//! The event store and its projections under faults, against real servers:
//!
//! - a server SIGKILLed after storing an append and before its ack reached
//!   the writer, then restarted: the append retried with its id is stored
//!   once;
//! - a 3-node cluster whose R3 stream's leader is SIGKILLed, or cut off
//!   from the other two nodes, during concurrent appends: every aggregate's
//!   versions stay consecutive and every acked append is stored where its
//!   ack said;
//! - a projection runner in a child process (this test binary, re-executed)
//!   SIGKILLed at random points: every event lands once in its SQLite read
//!   model;
//! - two runner processes sharing a lease: one applies at a time, the
//!   standby takes over when the active one is SIGKILLed.
//!
//! Each prints the checker's row (`scripts/fault-suite.sh`): appended events
//! acked and stored, or events of the stream applied to the read model.
//! `JETEVENTS_FAULT_SCALE` multiplies the leader faults and the runner kills
//! (and the events they need).
//!
//! Its own binary: it owns servers and kills processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::eventstore::projection::Lease;
use jetevents::eventstore::{
    AppendError, AppendOptions, Appended, EventStore, Expected, StoreStream,
};
use jetevents_testcontainers::{FaultMode, FaultProxy, NatsCluster, NatsServer};
use tokio::process::Child;
use tokio::sync::Mutex;

mod checker;
mod eventstore_ledger;
mod eventstore_support;
use checker::cluster::wait_healed;
use checker::{replicas_current, scaled, Bounds, Checker};
// The checker's path to the shared helpers.
use eventstore_ledger::{assert_exactly_once, database, rows, write_events, Ledger};
use eventstore_support::support;
use eventstore_support::support::eventually;
use eventstore_support::{
    connect, deposits, fresh_store, shared_server, stored_messages, unique, Account,
};

const WAIT: Duration = Duration::from_secs(60);

/// Retries an append with the same id until it is answered, as a caller
/// told "outcome unknown" does.
async fn append_until_answered(
    store: &EventStore,
    key: &str,
    amounts: &[u64],
    expected: Expected,
    append_id: &str,
) -> Appended {
    match append_until(store, key, amounts, expected, append_id).await {
        Ok(appended) => appended,
        Err(err) => panic!("append {append_id} still failing: {err}"),
    }
}

/// Retries an append with its id until answered or [`WAIT`] has passed;
/// then the last error.
async fn append_until(
    store: &EventStore,
    key: &str,
    amounts: &[u64],
    expected: Expected,
    append_id: &str,
) -> Result<Appended, AppendError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt: Result<Appended, AppendError> = store
            .append_with::<Account>(
                key,
                deposits(amounts.iter().copied()),
                expected,
                AppendOptions::default().id(append_id),
            )
            .await;
        match attempt {
            Ok(appended) => return Ok(appended),
            Err(err) if Instant::now() >= deadline => return Err(err),
            // Between attempts, as a caller's backoff.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn stream_messages(client: &Client, stream: &str) -> u64 {
    match client.jetstream().unwrap().get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_ack_died_with_the_server_is_stored_once_when_retried() {
    let mut server = NatsServer::builder().start().await.unwrap();
    let upstream = format!("127.0.0.1:{}", server.client_port());
    let proxy = FaultProxy::start(upstream.parse().unwrap()).await.unwrap();
    let env = unique("esfault");
    let writer = connect(&proxy.url(), &env, |config| {
        config.ack_timeout = Duration::from_secs(1);
    })
    .await;
    let watcher = connect(&server.url(), &env, |_| {}).await;
    let store = EventStore::provision(&writer, StoreStream::new("ES_FAULTS", "bank"))
        .await
        .unwrap();

    // The server stores the append; its ack never reaches the writer. (One
    // event, with no read before it: a batch's first message and a read
    // need answers, which are dropped too.)
    proxy.set_mode(FaultMode::DropReplies);
    let first_attempt = tokio::spawn({
        let store = store.clone();
        async move { append_until_answered(&store, "k", &[1], Expected::NoStream, "lost-ack").await }
    });
    eventually("the append stored", WAIT, || async {
        stream_messages(&watcher, "ES_FAULTS").await == 1
    })
    .await;
    server.kill().await.unwrap();
    server.restart().await.unwrap();
    proxy.set_mode(FaultMode::Pass);

    let answered = tokio::time::timeout(WAIT, first_attempt)
        .await
        .unwrap()
        .unwrap();
    // The caller retries too, expecting nothing of the version.
    let retried = append_until_answered(&store, "k", &[1], Expected::Any, "lost-ack").await;
    for appended in [&answered, &retried] {
        assert_eq!((appended.first_version, appended.version), (1, 1));
    }
    let stored = stored_messages(&watcher, &store, "k").await;
    let versions: Vec<u64> = stored.iter().map(|message| message.2).collect();
    let checker = Checker::publish_only("es-append-ack-lost");
    checker.acked("k@1");
    for version in &versions {
        checker.stored(&format!("k@{version}"));
    }
    checker.report().assert_holds(&Bounds {
        faults: "ack dropped, SIGKILL x1".to_owned(),
        extra_handlings: 0,
        unknown: 0,
        refused: 0,
    });
    assert_eq!(versions, [1], "stored once");
    store
        .append::<Account>("k", deposits([2]), Expected::Version(1))
        .await
        .unwrap();
    assert_eq!(stream_messages(&watcher, "ES_FAULTS").await, 2);
    let loaded = store.load::<Account>("k").await.unwrap();
    assert_eq!(loaded.state.amounts, [1, 2]);
}

/// Every acked append: its aggregate, its amounts and its ack.
type Acked = Arc<Mutex<Vec<(String, Vec<u64>, Appended)>>>;

/// Appends never answered within [`WAIT`]: aggregate, amounts, last error.
type Unanswered = Arc<Mutex<Vec<(String, Vec<u64>, String)>>>;

/// Appends of three events by `writers` writers to two shared aggregates,
/// `per_writer` each, writer `w` through `stores[w % stores.len()]`; every
/// append retried with its id until answered, or given up after [`WAIT`]
/// (an outcome unknown to the writer, as to a caller with a deadline).
/// Files each answer with its amounts.
fn write_concurrently(
    stores: &[EventStore],
    writers: u64,
    per_writer: u64,
    acked: &Acked,
    unanswered: &Unanswered,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|writer| {
            let store = stores[writer as usize % stores.len()].clone();
            let (acked, unanswered) = (acked.clone(), unanswered.clone());
            tokio::spawn(async move {
                let key = format!("acc-{}", writer % 2);
                for append in 0..per_writer {
                    let first = (writer * 1_000 + append) * 10;
                    let amounts = vec![first, first + 1, first + 2];
                    let id = format!("w{writer}-{append}");
                    match append_until(&store, &key, &amounts, Expected::Any, &id).await {
                        Ok(appended) => acked.lock().await.push((key.clone(), amounts, appended)),
                        Err(err) => {
                            println!("append {id} unanswered after {WAIT:?}: {err}");
                            unanswered
                                .lock()
                                .await
                                .push((key.clone(), amounts, err.to_string()));
                        }
                    }
                }
            })
        })
        .collect()
}

/// What happens to the stream leader during the appends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LeaderFault {
    /// SIGKILLed, restarted once a new leader acked an append.
    Kill,
    /// Cut off from the other two nodes (routes stalled), healed once a new
    /// leader acked an append.
    Partition,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leader_killed_during_appends_keeps_versions_and_acked_events() {
    appends_through(LeaderFault::Kill, scaled(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leader_cut_off_during_appends_keeps_versions_and_acked_events() {
    appends_through(LeaderFault::Partition, scaled(3)).await;
}

/// Four writers append to two aggregates of an R3 stream while the stream
/// leader meets `fault` `cycles` times, spread over the run; then every
/// acked event is stored once, where its ack said, versions consecutive.
async fn appends_through(fault: LeaderFault, cycles: usize) {
    const STREAM: &str = "ES_CLUSTER";
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let env = unique("escluster");
    let mut clients = Vec::new();
    match fault {
        // One client, which reconnects to a node left.
        LeaderFault::Kill => clients.push(
            connect(&urls[0], &env, |config| {
                config.servers = urls.clone();
                config.ack_timeout = Duration::from_secs(1);
            })
            .await,
        ),
        // One client per node: each side keeps its writers (a client stays
        // connected to its cut-off node).
        LeaderFault::Partition => {
            for url in &urls {
                clients.push(
                    connect(url, &env, |config| {
                        config.ack_timeout = Duration::from_secs(1);
                    })
                    .await,
                );
            }
        }
    }
    let mut stream = StoreStream::new(STREAM, "bank");
    stream.replicas = 3;
    // Right after a cluster forms, R3 placement can be refused ("no
    // suitable peers") until every peer has caught up with the meta leader.
    let deadline = Instant::now() + WAIT;
    let store = loop {
        match EventStore::provision(&clients[0], stream.clone()).await {
            Ok(store) => break store,
            Err(err) => assert!(Instant::now() < deadline, "store not provisioned: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stores: Vec<EventStore> = clients
        .iter()
        .map(|client| EventStore::new(client.clone(), STREAM))
        .collect();

    let (writers, per_writer) = (4, 40 * cycles as u64);
    let total = writers * per_writer;
    let acked = Acked::default();
    let unanswered = Unanswered::default();
    let tasks = write_concurrently(&stores, writers, per_writer, &acked, &unanswered);
    let mut elections = 0;
    for cycle in 0..cycles as u64 {
        // Spread over the run, leaving appends for the last new leader.
        let target = (cycle + 1) * total / (cycles as u64 + 2);
        eventually("appends acked before the fault", WAIT, || async {
            acked.lock().await.len() as u64 >= target
        })
        .await;
        let leader = cluster.stream_leader(STREAM).await.unwrap();
        let others: Vec<usize> = (0..urls.len()).filter(|i| *i != leader).collect();
        match fault {
            LeaderFault::Kill => cluster.kill(leader).await.unwrap(),
            LeaderFault::Partition => cluster.isolate(leader).unwrap(),
        }
        let new_leader = cluster
            .wait_for_stream_leader_among(STREAM, &others)
            .await
            .unwrap();
        elections += usize::from(new_leader != leader);
        // The new leader acks an append. Not necessarily one of the
        // writers': those on the nodes that reach it may have finished all
        // theirs, and those on a cut-off node wait for the heal. So a probe
        // through a node that reaches it, on an aggregate of its own.
        let through = match fault {
            LeaderFault::Kill => &stores[0],
            LeaderFault::Partition => &stores[others[0]],
        };
        append_until_answered(
            through,
            "probe",
            &[cycle],
            Expected::Any,
            &format!("probe-{cycle}"),
        )
        .await;
        match fault {
            LeaderFault::Kill => cluster.restart(leader).await.unwrap(),
            LeaderFault::Partition => cluster.heal(),
        }
        wait_healed(&cluster).await;
        // Before the next fault both followers must be current, or the
        // stream is left without a quorum.
        let watcher = clients.get(others[0]).unwrap_or(&clients[0]);
        eventually("all replicas current", WAIT, || async {
            replicas_current(watcher, STREAM).await
        })
        .await;
    }
    for task in tasks {
        // A writer may give up on appends after WAIT each.
        tokio::time::timeout(WAIT * 4, task).await.unwrap().unwrap();
    }

    let acked = acked.lock().await;
    let unanswered = unanswered.lock().await;
    assert_eq!((acked.len() + unanswered.len()) as u64, total);
    let checker = Checker::publish_only(match fault {
        LeaderFault::Kill => "es-append-leader-kill",
        LeaderFault::Partition => "es-append-leader-partition",
    });
    for (_, amounts, _) in acked.iter() {
        for amount in amounts {
            checker.acked(&amount.to_string());
        }
    }
    for (_, amounts, _) in unanswered.iter() {
        for amount in amounts {
            checker.unknown(&amount.to_string());
        }
    }
    let mut loaded = Vec::new();
    for key in ["acc-0", "acc-1"] {
        // Loading checks that versions are consecutive from 1.
        let state = store.load::<Account>(key).await.unwrap().state;
        for amount in &state.amounts {
            checker.stored(&amount.to_string());
        }
        loaded.push((key, state.amounts));
    }
    checker.report().assert_holds(&Bounds {
        faults: match fault {
            LeaderFault::Kill => format!("leader kill x{cycles}"),
            LeaderFault::Partition => {
                format!("leader cut off x{cycles} ({elections} elections)")
            }
        },
        extra_handlings: 0,
        // An append left unanswered (its id "in process" on the server for
        // all of WAIT, seen once after a cut-off leader healed): at most
        // one per writer and fault, three events each.
        unknown: 3 * writers as usize * cycles,
        refused: 0,
    });
    assert_eq!(elections, cycles, "a new leader at every fault");
    for (key, amounts) in loaded {
        let of_key: Vec<_> = acked.iter().filter(|(k, ..)| k == key).collect();
        // An unanswered append is stored whole and contiguous, or not at all.
        let unanswered_stored = unanswered
            .iter()
            .filter(|(k, ..)| k == key)
            .filter(|(_, written, _)| {
                match amounts.iter().position(|amount| *amount == written[0]) {
                    Some(at) => {
                        assert_eq!(
                            amounts.get(at..at + 3),
                            Some(&written[..]),
                            "{key}: an unanswered append stored partly or apart"
                        );
                        true
                    }
                    None => {
                        assert!(
                            written.iter().all(|w| !amounts.contains(w)),
                            "{key}: an unanswered append stored partly"
                        );
                        false
                    }
                }
            })
            .count();
        assert_eq!(
            amounts.len(),
            (of_key.len() + unanswered_stored) * 3,
            "{key}: an append stored twice or lost"
        );
        for (_, written, appended) in of_key {
            let at = (appended.first_version - 1) as usize..appended.version as usize;
            assert_eq!(&amounts[at], &written[..], "{key}: not where its ack said");
        }
    }
}

const CHILD_URL: &str = "ES_FAULTS_CHILD_URL";
const CHILD_ENV: &str = "ES_FAULTS_CHILD_ENV";
const CHILD_STREAM: &str = "ES_FAULTS_CHILD_STREAM";
const CHILD_DB: &str = "ES_FAULTS_CHILD_DB";
const CHILD_RUNNER: &str = "ES_FAULTS_CHILD_RUNNER";
const CHILD_LEASES: &str = "ES_FAULTS_CHILD_LEASES";
const LEASE_TTL: Duration = Duration::from_secs(1);

/// A projection runner process. Runs only when re-executed by the tests
/// below: a ledger into the SQLite database in `CHILD_DB`, with a lease
/// from `CHILD_LEASES` when set, until it is killed.
#[tokio::test]
#[ignore = "run as a child process by other tests"]
async fn child_projection_runner() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
    };
    let client = connect(&var(CHILD_URL), &var(CHILD_ENV), |_| {}).await;
    let store = EventStore::new(client.clone(), var(CHILD_STREAM));
    let pool = database(Path::new(&var(CHILD_DB))).await;
    let mut ledger = Ledger::new(var(CHILD_RUNNER));
    ledger.work = Duration::from_millis(2);
    let mut runner = eventstore_ledger::sqlite_runner(&store, &pool, ledger).await;
    if let Ok(leases) = std::env::var(CHILD_LEASES) {
        let lease = Lease::provision(&client, &leases, "ledger", LEASE_TTL)
            .await
            .unwrap();
        runner = runner.with_lease(lease);
    }
    // Tells the parent when it starts and stops applying.
    let mut progress = runner.progress();
    let name = var(CHILD_RUNNER);
    tokio::spawn(async move {
        let mut active = false;
        while progress.changed().await.is_ok() {
            let now = progress.borrow_and_update().active;
            if now != active {
                active = now;
                println!("ACTIVE {name} {now}");
            }
        }
    });
    runner.run(std::future::pending()).await.unwrap();
}

/// What runner processes said about themselves, in order: `a true`.
type Activity = Arc<std::sync::Mutex<Vec<String>>>;

/// Collects the `ACTIVE` lines of `child` into `activity`.
fn watch_activity(child: &mut Child, activity: &Activity) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = child.stdout.take().unwrap();
    let activity = activity.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // The harness's own output may share the line.
            if let Some((_, said)) = line.split_once("ACTIVE ") {
                activity.lock().unwrap().push(said.trim().to_owned());
            }
        }
    });
}

/// Starts a runner process named `runner` on `store`'s events.
fn spawn_runner(
    url: &str,
    client: &Client,
    store: &EventStore,
    db: &Path,
    runner: &str,
    leases: Option<&str>,
) -> Child {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_projection_runner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_ENV, client.subjects().env())
        .env(CHILD_STREAM, store.stream())
        .env(CHILD_DB, db)
        .env(CHILD_RUNNER, runner)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(leases) = leases {
        command.env(CHILD_LEASES, leases);
    }
    command.spawn().unwrap()
}

/// The checker's row for a read model: every event of the stream
/// (sequences `1..=events`) acked, every row a handling of its event, so an
/// event applied twice is a duplicate and one never applied is lost.
fn read_model_row(name: &str, events: usize, rows: &[(i64, String, i64, String)], faults: String) {
    let checker = Checker::new(name);
    for sequence in 1..=events {
        checker.acked(&sequence.to_string());
    }
    for row in rows {
        checker.handled(&row.0.to_string());
    }
    checker.nothing_stored();
    checker.report().assert_holds(&Bounds {
        faults,
        extra_handlings: 0,
        unknown: 0,
        refused: 0,
    });
}

async fn sigkill(mut child: Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_process_killed_at_random_points_applies_each_event_once() {
    let url = shared_server().await.url();
    let (client, store) = fresh_store().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = database(dir.path()).await;
    let events = write_events(&store, 4, scaled(100) as u64).await;
    // The stream holds these events only: sequences 1..=events.
    assert_eq!(
        stream_messages(&client, store.stream()).await,
        events as u64
    );
    let kills = scaled(5);
    let seed = fastrand::u64(..);
    println!("kill points from seed {seed}");
    let mut random = fastrand::Rng::with_seed(seed);

    let mut killed_mid_run = 0;
    for _ in 0..kills {
        let before = rows(&pool).await.len();
        let target = (before + random.usize(1..80)).min(events);
        let child = spawn_runner(&url, &client, &store, dir.path(), "a", None);
        eventually("the runner to apply more", WAIT, || async {
            rows(&pool).await.len() >= target
        })
        .await;
        sigkill(child).await;
        let after = rows(&pool).await;
        if after.len() < events {
            killed_mid_run += 1;
        }
        assert_exactly_once(&after, after.len());
    }
    assert!(killed_mid_run > 0, "no kill hit the runner mid-run");

    let child = spawn_runner(&url, &client, &store, dir.path(), "a", None);
    eventually("the read model to catch up", WAIT, || async {
        rows(&pool).await.len() >= events
    })
    .await;
    sigkill(child).await;
    let rows = rows(&pool).await;
    read_model_row(
        "projection-runner-sigkill",
        events,
        &rows,
        format!("runner SIGKILL x{kills} ({killed_mid_run} mid-run)"),
    );
    assert_exactly_once(&rows, events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_runner_processes_one_applies_and_the_standby_takes_over_its_kill() {
    let url = shared_server().await.url();
    let (client, store) = fresh_store().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = database(dir.path()).await;
    let leases = unique("leases");
    let events = write_events(&store, 3, 100).await;
    assert_eq!(
        stream_messages(&client, store.stream()).await,
        events as u64
    );
    let activity = Activity::default();
    let runner = |name| {
        let mut child = spawn_runner(&url, &client, &store, dir.path(), name, Some(&leases));
        watch_activity(&mut child, &activity);
        Some(child)
    };
    let (mut a, mut b) = (runner("a"), runner("b"));

    eventually("the active runner to apply", WAIT, || async {
        rows(&pool).await.len() >= 50
    })
    .await;
    let active = rows(&pool).await[0].3.clone();
    let standby = if active == "a" { "b" } else { "a" };
    let killed = if active == "a" { a.take() } else { b.take() };
    sigkill(killed.unwrap()).await;
    assert!(
        rows(&pool).await.len() < events,
        "the active runner finished before its kill"
    );
    assert_eq!(
        *activity.lock().unwrap(),
        [format!("{active} true")],
        "only one runner was active"
    );

    eventually("the standby to take over", WAIT, || async {
        activity
            .lock()
            .unwrap()
            .contains(&format!("{standby} true"))
    })
    .await;
    eventually("the standby to finish", WAIT, || async {
        rows(&pool).await.len() >= events
    })
    .await;
    let survivor = a.or(b).unwrap();
    sigkill(survivor).await;
    let rows = rows(&pool).await;
    read_model_row(
        "projection-lease-failover",
        events,
        &rows,
        "active runner SIGKILL x1, standby took over".to_owned(),
    );
    assert_exactly_once(&rows, events);
    // By stream sequence: the killed runner's rows, then the standby's,
    // never interleaved.
    let mut runners: Vec<&str> = rows.iter().map(|row| row.3.as_str()).collect();
    runners.dedup();
    assert_eq!(runners, [active.as_str(), standby]);
}
