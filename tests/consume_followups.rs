//! Follow-up events of a handler that runs again (a transient failure, a
//! process killed before its ack) are stored once: the run publishes them
//! under the same ids and the server's `Nats-Msg-Id` dedup drops the repeats.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

use jetevents::consume::{Context, DeadLetterConfig, HandlerError, RetryPolicy};
use jetevents::envelope::Envelope;
use jetevents::Event;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, OrderShipped, Running, World};

const GROUP: &str = "shipper";
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Publishes three follow-ups of `event`, each a different way that carries
/// the handler's lineage: the context, the context's publisher, and
/// `publish_many` on it. All three share the run's ordinal counter.
async fn publish_three_follow_ups<S>(
    event: &OrderPlaced,
    ctx: &Context<S>,
) -> Result<(), HandlerError> {
    let shipped = |part: &str| OrderShipped {
        order: format!("{}-{part}", event.order),
    };
    ctx.publish(&shipped("a")).await?;
    ctx.publisher().publish(&shipped("b")).await?;
    for result in ctx.publisher().publish_many(&[shipped("c")], 1).await {
        result?;
    }
    Ok(())
}

/// Every follow-up (`OrderShipped`) stored in the world's stream.
async fn stored_follow_ups(world: &World) -> Vec<Envelope> {
    let mut stream = world
        .client
        .jetstream()
        .unwrap()
        .get_stream(&world.stream)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut follow_ups = Vec::new();
    for sequence in 1..=last {
        let raw = stream.get_raw_message(sequence).await.unwrap();
        let envelope = jetevents::codec::decode(Some(&raw.headers), &raw.payload).unwrap();
        if envelope.event_type == OrderShipped::TYPE {
            follow_ups.push(envelope);
        }
    }
    follow_ups
}

/// Exactly three follow-ups, distinct, each caused by `cause`.
async fn assert_three_follow_ups_of(world: &World, cause: &str) {
    let follow_ups = stored_follow_ups(world).await;
    let ids: Vec<&str> = follow_ups.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(follow_ups.len(), 3, "stored follow-ups: {ids:?}");
    for envelope in &follow_ups {
        assert_eq!(envelope.causation_id(), Some(cause), "{}", envelope.id);
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids:?}");
}

#[tokio::test]
async fn follow_ups_of_a_handler_that_failed_twice_are_stored_once() {
    let world = World::on_shared_server().await;
    let runs: Log<u64> = Log::default();
    let consumer = world
        .consumer(GROUP)
        .retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(5))
        .with_state(runs.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            publish_three_follow_ups(&event, &ctx).await?;
            ctx.state().push(ctx.delivery_count());
            if ctx.delivery_count() < 3 {
                return Err(HandlerError::transient("carrier API down"));
            }
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let cause = world.publish(1).await;

    eventually("the third run", Duration::from_secs(20), || async {
        runs.len() >= 3
    })
    .await;
    world.wait_settled(GROUP).await;
    running.stop().await;
    assert_eq!(runs.items(), [1, 2, 3]);
    assert!(world
        .dead_letter_api()
        .list_for_consumer(GROUP, 10)
        .await
        .unwrap()
        .is_empty());
    assert_three_follow_ups_of(&world, &cause).await;
}

// The child process: a consumer instance of the test's world.
const CHILD_URL: &str = "FOLLOWUPS_CHILD_URL";
const CHILD_ENV: &str = "FOLLOWUPS_CHILD_ENV";
const CHILD_STREAM: &str = "FOLLOWUPS_CHILD_STREAM";
const CHILD_DEAD_LETTERS: &str = "FOLLOWUPS_CHILD_DEAD_LETTERS";
const CHILD_DEAD_LETTER_PREFIX: &str = "FOLLOWUPS_CHILD_DEAD_LETTER_PREFIX";
/// `hang`: never return after publishing (the test kills it), `ack`: return.
const CHILD_THEN: &str = "FOLLOWUPS_CHILD_THEN";

/// A consumer instance run only when re-executed by
/// `follow_ups_of_an_instance_killed_before_acking_are_stored_once`: it
/// publishes the follow-ups, prints `PUBLISHED <delivery count>`, then hangs
/// or returns as `FOLLOWUPS_CHILD_THEN` says.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_instance_publishing_follow_ups() {
    let vars = [
        CHILD_URL,
        CHILD_ENV,
        CHILD_STREAM,
        CHILD_DEAD_LETTERS,
        CHILD_DEAD_LETTER_PREFIX,
        CHILD_THEN,
    ]
    .map(std::env::var);
    let [Ok(url), Ok(env), Ok(stream), Ok(dead_letters), Ok(prefix), Ok(then)] = vars else {
        return;
    };
    let world = World {
        client: consume_common::connect(&url, &env).await,
        stream,
        dead_letters: DeadLetterConfig::new(dead_letters, prefix),
    };
    let hang = then == "hang";
    let consumer = world
        .consumer(GROUP)
        .ack_wait(ACK_WAIT)
        .handle(move |event: OrderPlaced, ctx: Context| async move {
            publish_three_follow_ups(&event, &ctx).await?;
            println!("PUBLISHED {}", ctx.delivery_count());
            if hang {
                std::future::pending::<()>().await;
            }
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    consumer.run_until(std::future::pending()).await.unwrap();
}

/// Starts a child instance on `world` and returns it with its stdout lines.
fn spawn_instance(url: &str, world: &World, then: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_instance_publishing_follow_ups",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_ENV, world.client.subjects().env())
        .env(CHILD_STREAM, &world.stream)
        .env(CHILD_DEAD_LETTERS, &world.dead_letters.stream)
        .env(CHILD_DEAD_LETTER_PREFIX, &world.dead_letters.subject_prefix)
        .env(CHILD_THEN, then)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// Reads `lines` until a child reports its follow-ups published; the
/// delivery count it reported.
async fn published(lines: &mut Lines<BufReader<ChildStdout>>) -> u64 {
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The harness's own output may share the line.
            if let Some((_, count)) = line.split_once("PUBLISHED ") {
                return count.trim().parse().unwrap();
            }
        }
        panic!("the child ended without publishing");
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the child did not publish in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_of_an_instance_killed_before_acking_are_stored_once() {
    let url = support::shared_server().await.url();
    let world = World::on(&url).await;
    let cause = world
        .client
        .publisher()
        .publish(&order(7))
        .await
        .unwrap()
        .event_id;

    let (mut doomed, mut doomed_lines) = spawn_instance(&url, &world, "hang");
    assert_eq!(published(&mut doomed_lines).await, 1);
    // SIGKILL after the follow-ups were stored, before the ack.
    doomed.start_kill().unwrap();
    doomed.wait().await.unwrap();

    let (_survivor, mut survivor_lines) = spawn_instance(&url, &world, "ack");
    assert_eq!(published(&mut survivor_lines).await, 2);
    world.wait_settled(GROUP).await;
    assert_three_follow_ups_of(&world, &cause).await;
}
