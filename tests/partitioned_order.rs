//! Partitioned groups on one server: events of a key are handled in publish
//! order and never two at a time while members are SIGKILLed and added and
//! handlers fail at random; a failing event holds its partition back until
//! it is dead-lettered, with the events it held recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::partitioned::PartitionedConsumer;
use jetevents::consume::{
    Consumer, Context, DeadLetterConfig, DeadLetters, HandlerError, RetryPolicy,
};

mod checker;
mod partitioned_common;
mod support;
use checker::{eventually, scaled};
use partitioned_common::{config, keyed, Keyed, Scenario};

const KEYS: usize = 200;
/// Events per key, per unit of `JETEVENTS_FAULT_SCALE`.
const PER_KEY: u32 = 50;
const PARTITIONS: u16 = 8;

/// A member of the group. Runs only when re-executed by the parent test.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_member() {
    partitioned_common::child_member().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_publish_order_while_members_are_killed_and_added() {
    let server = support::shared_server().await;
    let env = support::unique("pcg");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCG");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let run = Scenario {
        name: "partitioned-members-killed",
        child_test: "child_member",
        urls: vec![server.url()],
        env,
        stream,
        partitions: PARTITIONS,
        keys: KEYS,
        per_key: scaled(PER_KEY as usize) as u32,
    };
    run.members_killed_and_added(&client, None).await;
}

/// Partition 0 of 1: every key in one partition, so what a failing event
/// holds back is plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_holds_its_partition_until_dead_lettered() {
    let server = support::shared_server().await;
    let env = support::unique("pcgdl");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGDL");
    partitioned_common::stream(&client, &stream, 1, 1).await;
    // Key 0's first event fails every time; five more events follow it.
    let events: Vec<Keyed> = (0..3)
        .map(|seq| keyed(0, seq))
        .chain((0..3).map(|seq| keyed(1, seq)))
        .collect();
    for result in client.publisher().publish_many(&events, 8).await {
        result.unwrap();
    }
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let dead_letters = DeadLetterConfig::new(
        format!("{stream}_DL"),
        format!("dl{}", stream.to_ascii_lowercase()),
    );
    let builder = Consumer::builder(&client, "ledger")
        .stream(&stream)
        .dead_letter(dead_letters.clone())
        .retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(3))
        .with_state(started.clone())
        .handle(
            |event: Keyed, ctx: Context<Arc<Mutex<Vec<String>>>>| async move {
                ctx.state().lock().unwrap().push(event.op.clone());
                if event.op == "k0-0" {
                    return Err(HandlerError::transient("downstream refuses k0-0"));
                }
                Ok(())
            },
        );
    let member = PartitionedConsumer::build(builder, config(1))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(member.run_until(async move {
        let _ = stopped.await;
    }));
    eventually("every event started", Duration::from_secs(60), || async {
        started.lock().unwrap().len() >= 8
    })
    .await;
    let dead = support::dead_lettered(
        "k0-0 dead-lettered",
        &DeadLetters::with_config(&client, dead_letters),
        Duration::from_secs(30),
    )
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();

    // The three attempts of k0-0 come first: no later event overtook it.
    assert_eq!(
        *started.lock().unwrap(),
        ["k0-0", "k0-0", "k0-0", "k0-1", "k0-2", "k1-0", "k1-1", "k1-2"]
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].original_subject.ends_with(".k0"), "{dead:?}");
    assert_eq!(dead[0].held_behind, Some(5), "{dead:?}");
}
