//! Consumer instances dying or stopping with events in flight.
//!
//! - An instance running in a child process (this test binary, re-executed)
//!   is SIGKILLed while its handlers hold events unacked: the other instance
//!   of the group gets them.
//! - An instance shut down with handlers in flight while events keep coming:
//!   none is lost, the other instance takes over.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

mod checker;
mod support;
use checker::{
    chaos_stream, consumer, eventually, op, read_back, scaled, Bounds, Checker, Running,
};

const CHILD_URL: &str = "RELIABILITY_CHILD_URL";
const CHILD_ENV: &str = "RELIABILITY_CHILD_ENV";
const CHILD_STREAM: &str = "RELIABILITY_CHILD_STREAM";
const ACK_WAIT: Duration = Duration::from_secs(2);

/// The instance that gets killed. Runs only when re-executed by
/// `an_instance_killed_before_acking_hands_its_events_to_the_other`: it prints
/// `STARTED <op>` for every event it starts and never finishes one.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_instance_that_never_acks() {
    let (Ok(url), Ok(env), Ok(stream)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_ENV),
        std::env::var(CHILD_STREAM),
    ) else {
        // Run on its own (`--ignored`) it has nothing to do: fail rather
        // than pass without running.
        panic!("{CHILD_URL}, {CHILD_ENV} and {CHILD_STREAM} are set by the parent test");
    };
    let client = support::connect(&url, &env, |_| {}).await;
    // Same group settings as the survivor's, with a handler that hangs.
    let hanging = jetevents::consume::Consumer::builder(&client, "workers")
        .stream(&stream)
        .dead_letter(jetevents::consume::DeadLetterConfig::new(
            format!("{stream}_DL"),
            format!("dl{}", stream.to_ascii_lowercase()),
        ))
        .ack_wait(ACK_WAIT)
        .pull_expiry(Duration::from_millis(500))
        .concurrency(4)
        .handle(
            |event: checker::Op, _ctx: jetevents::consume::Context| async move {
                println!("STARTED {}", event.op);
                std::future::pending::<()>().await;
                Ok::<_, jetevents::consume::HandlerError>(())
            },
        )
        .build()
        .await
        .unwrap();
    hanging.run_until(std::future::pending()).await.unwrap();
}

/// What a child instance printed: `STARTED <op>` when a handler starts,
/// `HANDLED <op>` when it finished (before its runner acks).
#[derive(Default)]
struct ChildLog {
    started: BTreeSet<String>,
    handled: BTreeSet<String>,
}

/// Runs the `#[ignore]`d test `entry` of this binary as a child process,
/// an instance of the group on `stream`; `on_handled` sees each op it
/// reports handled. Returns the child, the ops it started, and the task
/// reading its output (it ends when the child exits).
fn spawn_instance(
    entry: &str,
    url: &str,
    env: &str,
    stream: &str,
    on_handled: impl Fn(&str) + Send + 'static,
) -> (
    tokio::process::Child,
    Arc<Mutex<BTreeSet<String>>>,
    tokio::task::JoinHandle<ChildLog>,
) {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            entry,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_ENV, env)
        .env(CHILD_STREAM, stream)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let reader = tokio::spawn({
        let started = started.clone();
        let stdout = child.stdout.take().unwrap();
        async move {
            let mut log = ChildLog::default();
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The harness's own output may share the line.
                if let Some((_, op)) = line.split_once("STARTED ") {
                    started.lock().unwrap().insert(op.trim().to_owned());
                } else if let Some((_, op)) = line.split_once("HANDLED ") {
                    on_handled(op.trim());
                    log.handled.insert(op.trim().to_owned());
                }
            }
            log.started = started.lock().unwrap().clone();
            log
        }
    });
    (child, started, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_before_acking_hands_its_events_to_the_other() {
    let server = support::shared_server().await;
    let env = support::unique("kill");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("WORK");
    chaos_stream(&client, &stream, 1).await;
    let count = scaled(40);
    let checker = Checker::new("instance-sigkill");
    let events: Vec<_> = (0..count).map(|n| op("work", n, 100)).collect();
    for (event, result) in events
        .iter()
        .zip(client.publisher().publish_many(&events, 64).await)
    {
        checker.record(&event.op, &result);
    }

    let (mut child, started, reader) = spawn_instance(
        "child_instance_that_never_acks",
        &server.url(),
        &env,
        &stream,
        |_| {},
    );
    // The child holds as many events as it has handler slots.
    eventually(
        "the child instance holds 4 events",
        Duration::from_secs(60),
        || async { started.lock().unwrap().len() >= 4 },
    )
    .await;

    let survivor = Running::start(
        consumer(&client, "workers", &stream, &checker, Duration::ZERO)
            .ack_wait(ACK_WAIT)
            .pull_expiry(Duration::from_millis(500))
            .concurrency(4)
            .build()
            .await
            .unwrap(),
    );
    // SIGKILL: no Nak, no shutdown; the events come back after the ack wait.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let held_by_child = reader.await.unwrap().started;

    eventually(
        "every event handled by the survivor",
        Duration::from_secs(60),
        || async { checker.all_acked_handled() },
    )
    .await;
    survivor.stop().await;
    read_back(&client, &stream, &checker).await;
    println!(
        "the killed instance held {} events: {held_by_child:?}",
        held_by_child.len()
    );
    // Handled here means handled by the survivor, the child's events
    // included: each once, as the child never acked (so never handled) any.
    checker
        .report()
        .assert_holds(&Bounds {
            faults: "instance SIGKILL x1".to_owned(),
            extra_handlings: 0,
            unknown: 0,
            refused: 0,
        })
        .assert_all_acked();
    assert_eq!(held_by_child.len(), 4, "{held_by_child:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_events_in_flight_while_publishing_loses_none() {
    let server = support::shared_server().await;
    let env = support::unique("stop");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("STOP");
    chaos_stream(&client, &stream, 1).await;
    let count = scaled(200);
    let checker = Checker::new("shutdown-in-flight");

    // A slow instance with a short grace: stopped with handlers running.
    let slow = Running::start(
        consumer(
            &client,
            "shippers",
            &stream,
            &checker,
            Duration::from_millis(300),
        )
        .ack_wait(ACK_WAIT)
        .pull_expiry(Duration::from_millis(500))
        .shutdown_grace(Duration::from_millis(100))
        .concurrency(8)
        .build()
        .await
        .unwrap(),
    );
    let publishing = tokio::spawn({
        let publisher = client.publisher();
        let checker = checker.clone();
        async move {
            for chunk in 0..count / 20 {
                let events: Vec<_> = (0..20).map(|n| op("stop", chunk * 20 + n, 100)).collect();
                for (event, result) in events.iter().zip(publisher.publish_many(&events, 20).await)
                {
                    checker.record(&event.op, &result);
                }
            }
        }
    });
    eventually(
        "the slow instance handled some",
        Duration::from_secs(30),
        || async { checker.handled_distinct() >= 8 },
    )
    .await;
    // Stopped mid-stream: up to 8 handlers are running; they are Naked.
    slow.stop().await;
    let handled_at_stop = checker.handled_distinct();

    let fast = Running::start(
        consumer(&client, "shippers", &stream, &checker, Duration::ZERO)
            .ack_wait(ACK_WAIT)
            .pull_expiry(Duration::from_millis(500))
            .shutdown_grace(Duration::from_millis(100))
            .concurrency(8)
            .build()
            .await
            .unwrap(),
    );
    publishing.await.unwrap();
    eventually("every event handled", Duration::from_secs(60), || async {
        checker.all_acked_handled()
    })
    .await;
    fast.stop().await;
    read_back(&client, &stream, &checker).await;
    assert!(
        handled_at_stop < count,
        "the slow instance finished everything before the stop"
    );
    // The handlers still running at the stop are Naked, not acked or
    // recorded: the second instance handles each event once.
    checker
        .report()
        .assert_holds(&Bounds {
            faults: "shutdown in flight x1".to_owned(),
            extra_handlings: 0,
            unknown: 0,
            refused: 0,
        })
        .assert_all_acked();
}

/// The group whose instances are killed over and over.
const CRASH_GROUP: &str = "crashers";
const CRASH_CONCURRENCY: usize = 4;
const CRASH_PREFETCH: usize = 4;
/// What an instance can hold unacked at a kill.
const CRASH_HELD: usize = CRASH_CONCURRENCY + CRASH_PREFETCH;
/// Long enough that a killed instance is always mid-handler.
const CRASH_HANDLER_DELAY: Duration = Duration::from_millis(50);
/// Kills per unit of `JETEVENTS_FAULT_SCALE`, plus the two instances still
/// running at the end: 102 at the default scale.
const KILLS_PER_SCALE: usize = 100;
/// Events per kill: more than two instances handle meanwhile, so every
/// kill finds work in flight.
const EVENTS_PER_KILL: usize = 200;

/// An instance of [`CRASH_GROUP`] that handles slowly, printing `STARTED`
/// and `HANDLED` lines. Runs only when re-executed by
/// `instances_killed_mid_handler_over_and_over_lose_nothing`.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_instance_handling_slowly() {
    let (Ok(url), Ok(env), Ok(stream)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_ENV),
        std::env::var(CHILD_STREAM),
    ) else {
        panic!("{CHILD_URL}, {CHILD_ENV} and {CHILD_STREAM} are set by the parent test");
    };
    let client = support::connect(&url, &env, |_| {}).await;
    let instance = crash_group(
        jetevents::consume::Consumer::builder(&client, CRASH_GROUP)
            .stream(&stream)
            .dead_letter(jetevents::consume::DeadLetterConfig::new(
                format!("{stream}_DL"),
                format!("dl{}", stream.to_ascii_lowercase()),
            ))
            .handle(
                |event: checker::Op, _ctx: jetevents::consume::Context| async move {
                    println!("STARTED {}", event.op);
                    tokio::time::sleep(CRASH_HANDLER_DELAY).await;
                    println!("HANDLED {}", event.op);
                    Ok::<_, jetevents::consume::HandlerError>(())
                },
            ),
    )
    .build()
    .await
    .unwrap();
    instance.run_until(std::future::pending()).await.unwrap();
}

/// The settings every instance of [`CRASH_GROUP`] shares.
fn crash_group<S: Clone + Send + Sync + 'static>(
    builder: jetevents::consume::ConsumerBuilder<S>,
) -> jetevents::consume::ConsumerBuilder<S> {
    builder
        .ack_wait(ACK_WAIT)
        .pull_expiry(Duration::from_millis(500))
        .concurrency(CRASH_CONCURRENCY)
        .prefetch(CRASH_PREFETCH)
}

/// Two instances (child processes) consume one group; again and again one
/// of them is SIGKILLed mid-handler and started again while the other
/// keeps consuming. At the end an instance in this process drains the
/// rest: every event handled, none lost, and only events a killed instance
/// had started handled twice, at most what it held per kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_killed_mid_handler_over_and_over_lose_nothing() {
    let server = support::shared_server().await;
    let env = support::unique("crash");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("CRASH");
    chaos_stream(&client, &stream, 1).await;
    let kills = scaled(KILLS_PER_SCALE);
    let count = kills * EVENTS_PER_KILL;
    let checker = Checker::new("instance-sigkill-mid-handler");
    let events: Vec<_> = (0..count).map(|n| op("crash", n, 100)).collect();
    for (event, result) in events
        .iter()
        .zip(client.publisher().publish_many(&events, 256).await)
    {
        checker.record(&event.op, &result);
    }

    let spawn = || {
        let checker = checker.clone();
        spawn_instance(
            "child_instance_handling_slowly",
            &server.url(),
            &env,
            &stream,
            move |op| checker.handled(op),
        )
    };
    let mut instances = [Some(spawn()), Some(spawn())];
    // Ops a killed instance had started: the only ones a kill can explain
    // handling twice.
    let mut started_by_killed = BTreeSet::new();
    let (mut killed, mut mid_handler) = (0, 0);
    // Alternately; the last two rounds kill the two still running.
    for round in 0..kills + 2 {
        let victim = round % 2;
        let (mut child, started, reader) = instances[victim].take().unwrap();
        eventually(
            "the instance to kill has a handler running",
            Duration::from_secs(60),
            || async { !started.lock().unwrap().is_empty() },
        )
        .await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        if round < kills {
            instances[victim] = Some(spawn());
        }
        let log = reader.await.unwrap();
        killed += 1;
        // Started and never finished: in its handler when the kill came.
        mid_handler += usize::from(log.started.iter().any(|op| !log.handled.contains(op)));
        started_by_killed.extend(log.started);
    }
    assert!(
        checker.handled_distinct() < count,
        "the killed instances handled everything: no kill came with work left"
    );

    let drainer = Running::start(
        crash_group(consumer(
            &client,
            CRASH_GROUP,
            &stream,
            &checker,
            Duration::ZERO,
        ))
        .build()
        .await
        .unwrap(),
    );
    eventually("every event handled", Duration::from_secs(120), || async {
        checker.all_acked_handled()
    })
    .await;
    drainer.stop().await;
    read_back(&client, &stream, &checker).await;
    checker
        .report()
        .assert_holds(&Bounds {
            faults: format!("instance SIGKILL x{killed} ({mid_handler} mid-handler)"),
            extra_handlings: (killed * CRASH_HELD) as u64,
            unknown: 0,
            refused: 0,
        })
        .assert_all_acked()
        .assert_duplicates_within(&started_by_killed);
    assert_eq!(mid_handler, killed, "every kill came mid-handler");
}
