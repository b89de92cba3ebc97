//! Consumer groups against a real server: instances of one group share the
//! events, different groups each get all of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use jetevents::consume::{Consumer, Context, HandlerError};

mod consume_common;
mod support;
use consume_common::{eventually, Log, OrderPlaced, Running, World};

/// A consumer of `group` that logs `(instance, n)` for every handled event.
async fn logging_consumer(
    world: &World,
    group: &str,
    instance: &'static str,
    log: Log<(&'static str, u64)>,
) -> Running {
    let consumer = world
        .consumer(group)
        .concurrency(2)
        .pull_expiry(Duration::from_millis(500))
        .with_state(log)
        .handle(
            move |event: OrderPlaced, ctx: Context<Log<(&'static str, u64)>>| async move {
                // Slow enough that one instance cannot drain the stream alone.
                tokio::time::sleep(Duration::from_millis(10)).await;
                ctx.state().push((instance, event.n));
                Ok::<_, HandlerError>(())
            },
        )
        .build()
        .await
        .unwrap();
    Running::start(consumer)
}

#[tokio::test]
async fn instances_of_one_group_split_the_events_each_handled_once() {
    let world = World::on_shared_server().await;
    let log = Log::default();
    let a = logging_consumer(&world, "billing", "a", log.clone()).await;
    let b = logging_consumer(&world, "billing", "b", log.clone()).await;

    const EVENTS: u64 = 60;
    for n in 0..EVENTS {
        world.publish(n).await;
    }
    eventually("all events handled", Duration::from_secs(30), || async {
        log.len() >= EVENTS as usize
    })
    .await;
    world.wait_settled("billing").await;

    let handled = log.items();
    let mut times_handled: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, n) in &handled {
        *times_handled.entry(*n).or_default() += 1;
    }
    assert_eq!(
        times_handled.len(),
        EVENTS as usize,
        "some event was never handled"
    );
    assert!(
        times_handled.values().all(|&times| times == 1),
        "some event was handled twice: {times_handled:?}"
    );
    let by_a = handled
        .iter()
        .filter(|(instance, _)| *instance == "a")
        .count();
    let by_b = handled
        .iter()
        .filter(|(instance, _)| *instance == "b")
        .count();
    assert!(by_a > 0 && by_b > 0, "a handled {by_a}, b handled {by_b}");

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn every_group_gets_every_event() {
    let world = World::on_shared_server().await;
    let log = Log::default();
    let billing = logging_consumer(&world, "billing", "billing", log.clone()).await;
    let shipping = logging_consumer(&world, "shipping", "shipping", log.clone()).await;

    const EVENTS: u64 = 20;
    for n in 0..EVENTS {
        world.publish(n).await;
    }
    eventually(
        "both groups handled all events",
        Duration::from_secs(30),
        || async { log.len() >= 2 * EVENTS as usize },
    )
    .await;
    world.wait_settled("billing").await;
    world.wait_settled("shipping").await;

    for group in ["billing", "shipping"] {
        let mut seen: Vec<u64> = log
            .items()
            .into_iter()
            .filter(|(instance, _)| *instance == group)
            .map(|(_, n)| n)
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..EVENTS).collect::<Vec<_>>(), "group {group}");
    }

    billing.stop().await;
    shipping.stop().await;
}

#[tokio::test]
async fn filter_subjects_come_from_the_handled_types() {
    let world = World::on_shared_server().await;
    let consumer = Consumer::builder(&world.client, "audit")
        .dead_letter(world.dead_letters.clone())
        .handle(|_: OrderPlaced, _: Context| async { Ok(()) })
        .build()
        .await
        .unwrap();
    let env = world.client.subjects().env().to_owned();
    assert_eq!(
        consumer.filter_subjects(),
        [
            format!("{env}.shop.order.placed.v1"),
            format!("{env}.shop.order.placed.v1.*")
        ]
    );
    // No stream given: found from the filters.
    assert_eq!(consumer.stream(), world.stream);
}
