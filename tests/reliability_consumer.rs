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

    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "child_instance_that_never_acks",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, server.url())
        .env(CHILD_ENV, &env)
        .env(CHILD_STREAM, &stream)
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
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The harness's own output may share the line.
                if let Some((_, op)) = line.split_once("STARTED ") {
                    started.lock().unwrap().insert(op.trim().to_owned());
                }
            }
        }
    });
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
    reader.await.unwrap();
    let held_by_child = started.lock().unwrap().clone();

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
