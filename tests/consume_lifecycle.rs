//! Long handlers, shutdown, server restarts and deleted consumers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use jetevents::consume::{Consumer, ConsumerBuilder, Context, HandlerError, RetryPolicy};
use jetevents_testcontainers::{FaultMode, FaultProxy, NatsServer};

mod consume_common;
mod support;
use consume_common::{connect, eventually, order, Log, OrderPlaced, Running, World};

/// Calls `(n, delivery)` and completions `n` of the slow handler.
type SlowState = (Log<(u64, u64)>, Log<u64>);
/// Starts `n` and completions `(instance, n)`.
type ShutdownState = (Log<u64>, Log<(&'static str, u64)>);

/// A consumer of group `group` with a 1 s ack wait whose handler takes
/// `handling` per event; calls `(n, delivery)` and completions `n` are logged.
async fn slow_consumer(
    world: &World,
    group: &str,
    handling: Duration,
    configure: impl FnOnce(ConsumerBuilder<()>) -> ConsumerBuilder<()>,
) -> (Running, Log<(u64, u64)>, Log<u64>) {
    let calls: Log<(u64, u64)> = Log::default();
    let done: Log<u64> = Log::default();
    let consumer = configure(world.consumer(group).ack_wait(Duration::from_secs(1)))
        .with_state((calls.clone(), done.clone()))
        .handle(
            move |event: OrderPlaced, ctx: Context<SlowState>| async move {
                let (calls, done) = ctx.state();
                calls.push((event.n, ctx.delivery_count()));
                tokio::time::sleep(handling).await;
                done.push(event.n);
                Ok::<_, HandlerError>(())
            },
        )
        .build()
        .await
        .unwrap();
    (Running::start(consumer), calls, done)
}

#[tokio::test]
async fn a_handler_slower_than_the_ack_wait_is_not_redelivered() {
    let world = World::on_shared_server().await;
    // Three times the ack wait.
    let (running, calls, done) = slow_consumer(&world, "reports", Duration::from_secs(3), |b| {
        b.concurrency(4)
    })
    .await;
    world.publish(1).await;

    eventually("slow handler done", Duration::from_secs(20), || async {
        done.len() == 1
    })
    .await;
    world.wait_settled("reports").await;
    // A redelivery during the three seconds would have started a second call
    // (there were free slots).
    assert_eq!(calls.items(), [(1, 1)]);
    running.stop().await;
}

/// The runner pulls ahead of its handlers (prefetch): events waiting for a
/// free slot behind a slow handler must be kept alive like running ones.
#[tokio::test]
async fn events_waiting_behind_a_slow_handler_are_not_redelivered() {
    let world = World::on_shared_server().await;
    let (running, calls, done) =
        slow_consumer(&world, "queued", Duration::from_millis(1500), |b| {
            b.concurrency(1).prefetch(8)
        })
        .await;
    for n in 1..=3 {
        world.publish(n).await;
    }

    eventually("all three handled", Duration::from_secs(30), || async {
        done.len() == 3
    })
    .await;
    world.wait_settled("queued").await;
    // The third waited three ack waits for its slot; a redelivery would show
    // as a second call or a delivery count above 1.
    let mut calls = calls.items();
    calls.sort();
    assert_eq!(calls, [(1, 1), (2, 1), (3, 1)]);
    running.stop().await;
}

#[tokio::test]
async fn shutdown_with_events_in_flight_loses_none() {
    let world = World::on_shared_server().await;
    const EVENTS: u64 = 12;
    let started: Log<u64> = Log::default();
    let finished: Log<(&'static str, u64)> = Log::default();

    let build = |instance: &'static str, delay: Duration| {
        let world = &world;
        let state = (started.clone(), finished.clone());
        async move {
            world
                .consumer("fulfil")
                .concurrency(4)
                .ack_wait(Duration::from_secs(2))
                .shutdown_grace(Duration::from_millis(200))
                .pull_expiry(Duration::from_millis(500))
                .with_state(state)
                .handle(
                    move |event: OrderPlaced, ctx: Context<ShutdownState>| async move {
                        let (started, finished) = ctx.state();
                        started.push(event.n);
                        tokio::time::sleep(delay).await;
                        finished.push((instance, event.n));
                        Ok::<_, HandlerError>(())
                    },
                )
                .build()
                .await
                .unwrap()
        }
    };

    // The first instance is slow: it is stopped with handlers running.
    let first = Running::start(build("first", Duration::from_secs(5)).await);
    for n in 0..EVENTS {
        world.publish(n).await;
    }
    eventually("first instance busy", Duration::from_secs(10), || async {
        started.len() >= 2
    })
    .await;
    first.stop().await;
    let in_flight_at_stop = started.len();
    assert!(in_flight_at_stop > 0);
    assert!(
        finished.items().is_empty(),
        "handlers were expected to be still running at shutdown"
    );

    // A second instance gets everything, the Naked in-flight events included.
    let second = Running::start(build("second", Duration::from_millis(5)).await);
    eventually("every event handled", Duration::from_secs(30), || async {
        let handled: BTreeSet<u64> = finished.items().into_iter().map(|(_, n)| n).collect();
        handled.len() == EVENTS as usize
    })
    .await;
    world.wait_settled("fulfil").await;
    second.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_handlers_finish_within_the_grace() {
    let world = World::on_shared_server().await;
    let started: Log<u64> = Log::default();
    let finished: Log<u64> = Log::default();
    let consumer = world
        .consumer("graceful")
        .shutdown_grace(Duration::from_secs(10))
        .with_state((started.clone(), finished.clone()))
        .handle(
            |event: OrderPlaced, ctx: Context<(Log<u64>, Log<u64>)>| async move {
                ctx.state().0.push(event.n);
                tokio::time::sleep(Duration::from_millis(500)).await;
                ctx.state().1.push(event.n);
                Ok::<_, HandlerError>(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;
    eventually("handler started", Duration::from_secs(10), || async {
        started.len() == 1
    })
    .await;
    running.stop().await;
    // Finished and acked before `run_until` returned.
    assert_eq!(finished.items(), [1]);
    world.wait_settled("graceful").await;
}

#[tokio::test]
async fn consuming_resumes_after_a_server_restart() {
    let mut server = NatsServer::start().await.unwrap();
    let world = World::on(&server.url()).await;
    let handled: Log<u64> = Log::default();
    let consumer = world
        .consumer("restarts")
        .retry(RetryPolicy::fixed(Duration::from_millis(100)))
        .pull_expiry(Duration::from_millis(500))
        .with_state(handled.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    for n in 0..3 {
        world.publish(n).await;
    }
    eventually(
        "events before the restart",
        Duration::from_secs(10),
        || async { handled.len() == 3 },
    )
    .await;

    server.kill().await.unwrap();
    server.restart().await.unwrap();

    // The client reconnects on its own; publish as soon as the server takes it.
    for n in 3..6 {
        eventually("publish after restart", Duration::from_secs(30), || async {
            world.client.publisher().publish(&order(n)).await.is_ok()
        })
        .await;
    }
    eventually(
        "events after the restart",
        Duration::from_secs(30),
        || async {
            let seen: BTreeSet<u64> = handled.items().into_iter().collect();
            seen == (0..6).collect()
        },
    )
    .await;
    assert!(!running.is_finished());
    running.stop().await;
}

#[tokio::test]
async fn a_deleted_consumer_is_recreated() {
    let world = World::on_shared_server().await;
    let handled: Log<u64> = Log::default();
    let consumer = world
        .consumer("phoenix")
        .pull_expiry(Duration::from_millis(300))
        .with_state(handled.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;
    eventually("first event", Duration::from_secs(10), || async {
        handled.len() == 1
    })
    .await;

    world
        .stream()
        .await
        .delete_consumer("phoenix")
        .await
        .unwrap();
    world.publish(2).await;

    eventually(
        "event after the consumer was deleted",
        Duration::from_secs(20),
        || async { handled.items().contains(&2) },
    )
    .await;
    assert!(!running.is_finished());
    running.stop().await;
}

#[tokio::test]
async fn a_deleted_stream_ends_the_runner_with_a_clear_error() {
    let world = World::on_shared_server().await;
    let consumer = world
        .consumer("orphan")
        .pull_expiry(Duration::from_millis(300))
        .handle(|_: OrderPlaced, _: Context| async { Ok(()) })
        .build()
        .await
        .unwrap();
    let task = tokio::spawn(consumer.run_until(std::future::pending()));
    world
        .client
        .jetstream()
        .unwrap()
        .delete_stream(&world.stream)
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("runner kept going without its stream")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(
        err.kind(),
        &jetevents::consume::ConsumeErrorKind::StreamNotFound(world.stream.clone())
    );
}

#[tokio::test]
async fn building_against_a_missing_stream_fails() {
    let world = World::on_shared_server().await;
    let err = Consumer::builder(&world.client, "lost")
        .stream("NO_SUCH_STREAM")
        .dead_letter(world.dead_letters.clone())
        .handle(|_: OrderPlaced, _: Context| async { Ok(()) })
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &jetevents::consume::ConsumeErrorKind::StreamNotFound("NO_SUCH_STREAM".into())
    );
}

/// The ack timeout bounds publish acks only: a timeout far shorter than any
/// JetStream API round trip must not fail the stream's or the consumer's
/// creation (it once did, when both shared one request timeout).
#[tokio::test]
async fn a_short_ack_timeout_does_not_bound_consumer_creation() {
    let server = jetevents_testcontainers::shared().await;
    let client = support::connect(&server.url(), &support::unique("env"), |config| {
        config.ack_timeout = Duration::from_micros(1);
    })
    .await;
    let world = World::provision(client).await;
    let consumer = world
        .consumer("quick-acks")
        .handle(|_: OrderPlaced, _: Context| async { Ok(()) })
        .build()
        .await;
    assert!(consumer.is_ok(), "{:?}", consumer.err());
}

#[tokio::test]
async fn consuming_resumes_after_an_outage_longer_than_the_pull() {
    let mut server = NatsServer::start().await.unwrap();
    let world = World::on(&server.url()).await;
    let handled: Log<u64> = Log::default();
    let consumer = world
        .consumer("outage")
        .pull_expiry(Duration::from_millis(300))
        .with_state(handled.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(0).await;
    eventually(
        "event before the outage",
        Duration::from_secs(10),
        || async { handled.len() == 1 },
    )
    .await;

    server.kill().await.unwrap();
    // The outage itself: several pull expiries and watchdog rounds long.
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.restart().await.unwrap();

    eventually(
        "publish after the outage",
        Duration::from_secs(30),
        || async { world.client.publisher().publish(&order(1)).await.is_ok() },
    )
    .await;
    eventually(
        "event after the outage",
        Duration::from_secs(30),
        || async { handled.items().contains(&1) },
    )
    .await;
    assert!(!running.is_finished());
    running.stop().await;
}

/// A stalled network (bytes held, connection kept) makes the runner give up
/// on pulls whose requests then reach the server late, after the stall. An
/// event the server hands to such a pull must still be handled at once, not
/// sit unacked until the ack wait brings it back.
#[tokio::test]
async fn events_for_pulls_given_up_during_a_network_stall_are_handled() {
    let server = NatsServer::start().await.unwrap();
    // Streams and publishing go straight to the server; only the consumer's
    // connection runs through the proxy.
    let world = World::on(&server.url()).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.client_port()).into())
        .await
        .unwrap();
    let consumer_client = connect(&proxy.url(), world.client.subjects().env()).await;
    let handled: Log<u64> = Log::default();
    let consumer = Consumer::builder(&consumer_client, "stalled")
        .stream(&world.stream)
        .dead_letter(world.dead_letters.clone())
        // Far beyond the deadline below: a redelivery cannot hide a lost one.
        .ack_wait(Duration::from_secs(120))
        .pull_expiry(Duration::from_millis(300))
        .with_state(handled.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(0).await;
    eventually(
        "event before the stall",
        Duration::from_secs(10),
        || async { handled.len() == 1 },
    )
    .await;

    proxy.set_mode(FaultMode::Stall);
    // The stall itself: several overdue pulls and watchdog rounds (each
    // waiting out the 5 s request timeout) long, far shorter than the
    // client's ping timeout, so the connection survives.
    tokio::time::sleep(Duration::from_secs(13)).await;
    world.publish(1).await;
    proxy.set_mode(FaultMode::Pass);

    eventually(
        "event published during the stall",
        Duration::from_secs(20),
        || async { handled.items().contains(&1) },
    )
    .await;
    assert!(!running.is_finished());
    running.stop().await;
}
