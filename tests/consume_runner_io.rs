//! The runner's own waits never hold its handlers: a hung handler is cut off
//! by the handler timeout (its event and those behind it are handled), and
//! handlers finish while the connection is stalled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::connection::State;
use futures_util::FutureExt;
use jetevents::consume::{Context, HandlerError, RetryPolicy};
use jetevents_testcontainers::{FaultMode, FaultProxy};
use opentelemetry::KeyValue;
use tokio::sync::watch;

mod consume_common;
mod metrics_reader;
mod support;
use consume_common::{eventually, Log, OrderPlaced, Running, World};
use metrics_reader::{Metrics, Recorder};

/// Calls `(instance, n, delivery)` and completions `(instance, n, delivery)`.
type Seen = (Log<(u8, u64, u64)>, Log<(u8, u64, u64)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_times_out_and_the_events_behind_it_are_handled() {
    const GROUP: &str = "hung";
    let server = support::shared_server().await;
    let recorder = Recorder::new();
    let world = World::on(&server.url()).await;
    let meter = recorder.meter();
    let metered = support::connect(&server.url(), world.client.subjects().env(), |config| {
        config.meter = Some(meter)
    })
    .await;
    let calls: Log<(u8, u64, u64)> = Log::default();
    let done: Log<(u8, u64, u64)> = Log::default();
    // Event 1 hangs forever on its first delivery, wherever it lands.
    let instance = |client: &jetevents::client::Client, id: u8| {
        jetevents::consume::Consumer::builder(client, GROUP)
            .stream(&world.stream)
            .dead_letter(world.dead_letters.clone())
            .concurrency(1)
            .prefetch(8)
            .handler_timeout(Duration::from_secs(1))
            .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(4))
            .with_state((calls.clone(), done.clone()))
            .handle(move |event: OrderPlaced, ctx: Context<Seen>| async move {
                let (calls, done) = ctx.state();
                let seen = (id, event.n, ctx.delivery_count());
                calls.push(seen);
                if seen.1 == 1 && seen.2 == 1 {
                    std::future::pending::<()>().await;
                }
                done.push(seen);
                Ok::<_, HandlerError>(())
            })
    };
    let first = instance(&metered, 1).build().await.unwrap();
    for n in 1..=5 {
        world.publish(n).await;
    }
    // One pull brings all five: 2..=5 wait behind the hung call.
    let first = Running::start(first);
    eventually("event 1 hangs", Duration::from_secs(20), || async {
        calls.items().contains(&(1, 1, 1))
    })
    .await;
    let second = Running::start(instance(&world.client, 2).build().await.unwrap());

    eventually("every event handled", Duration::from_secs(30), || async {
        let handled: BTreeSet<u64> = done.items().iter().map(|&(_, n, _)| n).collect();
        handled == (1..=5).collect()
    })
    .await;
    world.wait_settled(GROUP).await;
    let retried: Vec<_> = done
        .items()
        .into_iter()
        .filter(|seen| seen.1 == 1)
        .collect();
    assert!(
        retried.iter().all(|&(_, _, delivery)| delivery >= 2),
        "event 1 was handled again after its timeout: {retried:?}"
    );
    first.stop().await;
    second.stop().await;

    let totals = recorder.totals();
    let metrics = Metrics(&totals);
    assert_eq!(
        metrics.histogram_count(
            "messaging.process.duration",
            &[
                KeyValue::new("messaging.consumer.group.name", GROUP),
                KeyValue::new("error.type", "timeout"),
            ]
        ),
        1,
        "the hung call is recorded as a timeout"
    );
}

/// Started `n` and completed `n`, and the gate that lets handlers finish.
type Gated = (Log<u64>, Log<u64>, watch::Receiver<bool>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_finish_while_the_connection_is_stalled() {
    const GROUP: &str = "stalled";
    const EVENTS: u64 = 200;
    const CONCURRENCY: usize = 4;
    let server = support::shared_server().await;
    // Publishing and checking go straight to the server; the consumer's
    // client goes through the proxy.
    let world = World::on(&server.url()).await;
    let upstream = format!("127.0.0.1:{}", server.client_port())
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let proxied = support::connect(&proxy.url(), world.client.subjects().env(), |config| {
        // Notices the stall within a second and stays in reconnect.
        config.ping_interval = Duration::from_millis(200);
        config.connect_timeout = Duration::from_millis(500);
    })
    .await;

    let started: Log<u64> = Log::default();
    let finished: Log<u64> = Log::default();
    let (release, released) = watch::channel(false);
    // A short ack wait: in-progress acks every 100 ms for each of the
    // events waiting behind the handlers.
    let consumer = jetevents::consume::Consumer::builder(&proxied, GROUP)
        .stream(&world.stream)
        .dead_letter(world.dead_letters.clone())
        .concurrency(CONCURRENCY)
        .prefetch(EVENTS as usize)
        .ack_wait(Duration::from_millis(300))
        .pull_expiry(Duration::from_millis(500))
        .with_state((started.clone(), finished.clone(), released))
        .handle(|event: OrderPlaced, ctx: Context<Gated>| async move {
            let (started, finished, released) = ctx.state();
            started.push(event.n);
            released.clone().wait_for(|open| *open).await.ok();
            // Longer than the progress interval (100 ms): in-progress acks
            // fall due while the handler works and the client's queue is
            // full.
            tokio::time::sleep(Duration::from_millis(500)).await;
            finished.push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let orders: Vec<OrderPlaced> = (1..=EVENTS).map(consume_common::order).collect();
    for result in world.client.publisher().publish_many(&orders, 64).await {
        result.unwrap();
    }
    eventually(
        "handlers busy and events waiting",
        Duration::from_secs(20),
        || async {
            let (_, ack_pending) = world.consumer_counts(GROUP).await;
            started.len() == CONCURRENCY && ack_pending as u64 == EVENTS
        },
    )
    .await;

    // A black hole: the client notices (missed pings), and its reconnects
    // through the proxy get no answer.
    proxy.set_mode(FaultMode::Drop);
    eventually(
        "the client sees the stall",
        Duration::from_secs(10),
        || async { proxied.nats().unwrap().connection_state() != State::Connected },
    )
    .await;
    // The client's queue is full now: whatever the runner sends next waits
    // for the connection.
    let mut queued = 0;
    // Unconstrained: tokio's cooperative budget would make a send pending
    // after a hundred or so, with room still in the queue.
    while tokio::task::unconstrained(proxied.nats().unwrap().publish("stalled.filler", "".into()))
        .now_or_never()
        .is_some()
    {
        queued += 1;
        assert!(queued < 100_000, "the client's queue never filled");
    }

    release.send(true).unwrap();
    eventually(
        "released handlers finish during the stall",
        Duration::from_secs(20),
        || async { finished.len() >= CONCURRENCY },
    )
    .await;
    assert_ne!(
        proxied.nats().unwrap().connection_state(),
        State::Connected,
        "the handlers finished while the connection was still stalled"
    );

    proxy.set_mode(FaultMode::Pass);
    eventually("every event handled", Duration::from_secs(60), || async {
        finished.items().into_iter().collect::<BTreeSet<u64>>() == (1..=EVENTS).collect()
    })
    .await;
    running.stop().await;
}
