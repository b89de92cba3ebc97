//! A group as services really run it: a rolling deploy with two versions in
//! one group and a rollback, and an instance restarted again and again while
//! its event's handler runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents::consume::{Context, HandlerError, RetryPolicy};

mod consume_common;
mod support;
use consume_common::{eventually, Log, OrderPlaced, OrderShipped, Running, World};

/// `(instance version, event type, event id)` of every handled event.
type Handled = Log<(u8, &'static str, String)>;

const GROUP: &str = "fleet";

/// An instance of version 1 (handles `shop.order.placed.v1`) or version 2
/// (handles `shop.order.shipped.v1` too) of the same service.
async fn instance(world: &World, version: u8, handled: &Handled) -> Running {
    let builder = world
        .consumer(GROUP)
        .pull_expiry(Duration::from_millis(500))
        .prefetch(8)
        .with_state(handled.clone())
        .handle(move |_: OrderPlaced, ctx: Context<Handled>| async move {
            ctx.state().push((version, "placed", ctx.id().to_owned()));
            Ok::<_, HandlerError>(())
        });
    let builder = if version >= 2 {
        builder.handle(|_: OrderShipped, ctx: Context<Handled>| async move {
            ctx.state().push((2, "shipped", ctx.id().to_owned()));
            Ok::<_, HandlerError>(())
        })
    } else {
        builder
    };
    Running::start(builder.build().await.unwrap())
}

/// What the publisher stored, by type.
#[derive(Default)]
struct Published {
    placed: Vec<String>,
    shipped: Vec<String>,
}

/// Ten `placed` events of round `round`, each followed by a `shipped` one
/// when `shipped_too`.
async fn publish(
    publisher: &jetevents::publish::Publisher,
    published: &mut Published,
    round: u64,
    shipped_too: bool,
) {
    for i in 0..10 {
        let id = publisher
            .publish(&consume_common::order(round * 100 + i))
            .await
            .unwrap()
            .event_id;
        published.placed.push(id);
        if shipped_too {
            let id = publisher
                .publish(&OrderShipped {
                    order: format!("o-{round}-{i}"),
                })
                .await
                .unwrap()
                .event_id;
            published.shipped.push(id);
        }
    }
}

/// Version-1 instances replaced one at a time by version 2 while both types
/// are published, then one instance rolled back to version 1: every event
/// is handled, every `shipped` one by a version-2 instance, none acked
/// unhandled by version 1 (it would be missing), and the rolled-back
/// instance does not narrow the group's filter (the `shipped` events
/// published after the rollback would be skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_and_a_rollback_lose_no_event() {
    let world = World::on_shared_server().await;
    let handled = Handled::default();
    let publisher = world.client.publisher();
    let mut published = Published::default();
    let mut round = 0u64;
    let mut publish_round = |shipped_too: bool| {
        round += 1;
        (round, shipped_too)
    };

    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6} ms  {what}", started.elapsed().as_millis());
    let v1_a = instance(&world, 1, &handled).await;
    let v1_b = instance(&world, 1, &handled).await;
    let (r, both) = publish_round(false);
    publish(&publisher, &mut published, r, both).await;

    phase("// Roll forward: a's replaceme");
    // Roll forward: a's replacement widens the group's filter.
    v1_a.stop().await;
    let v2_a = instance(&world, 2, &handled).await;
    let (r, both) = publish_round(true);
    publish(&publisher, &mut published, r, both).await;
    let (r, both) = publish_round(true);
    publish(&publisher, &mut published, r, both).await;
    v1_b.stop().await;
    let v2_b = instance(&world, 2, &handled).await;
    let (r, both) = publish_round(true);
    publish(&publisher, &mut published, r, both).await;

    phase("// Roll b back while events ke");
    // Roll b back while events keep coming.
    v2_b.stop().await;
    let v1_c = instance(&world, 1, &handled).await;
    let (r, both) = publish_round(true);
    publish(&publisher, &mut published, r, both).await;
    let (r, both) = publish_round(true);
    publish(&publisher, &mut published, r, both).await;

    phase("let expected = published.place");
    let expected = published.placed.len() + published.shipped.len();
    eventually("every event handled", Duration::from_secs(240), || async {
        let distinct: BTreeSet<String> = handled.items().into_iter().map(|(_, _, id)| id).collect();
        distinct.len() >= expected
    })
    .await;
    phase("all handled");
    world.wait_settled(GROUP).await;
    phase("settled");

    let items = handled.items();
    let mut by_id: BTreeMap<String, Vec<(u8, &'static str)>> = BTreeMap::new();
    for (version, kind, id) in &items {
        by_id.entry(id.clone()).or_default().push((*version, kind));
    }
    let all: BTreeSet<&String> = published.placed.iter().chain(&published.shipped).collect();
    let lost: Vec<_> = all.iter().filter(|id| !by_id.contains_key(**id)).collect();
    let unexpected: Vec<_> = by_id.keys().filter(|id| !all.contains(id)).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    for id in &published.shipped {
        assert!(
            by_id[id].iter().all(|(version, _)| *version == 2),
            "shipped event {id} handled by {:?}",
            by_id[id]
        );
    }
    // The group's filter still delivers both types.
    let info = world.stream().await.consumer_info(GROUP).await.unwrap();
    let env = world.client.subjects().env().to_owned();
    assert_eq!(
        info.config.filter_subjects,
        vec![
            format!("{env}.shop.order.placed.v1"),
            format!("{env}.shop.order.placed.v1.*"),
            format!("{env}.shop.order.shipped.v1"),
            format!("{env}.shop.order.shipped.v1.*"),
        ],
        "the rolled-back instance narrowed the group's filter"
    );
    v2_a.stop().await;
    v1_c.stop().await;
}

/// The handler of the restart tests: it records each run, then hangs (mode
/// 0, the default), passes or fails as the test sets `mode`.
#[derive(Clone, Default)]
struct Gate {
    mode: Arc<AtomicU8>,
    runs: Log<u64>,
    done: Log<u64>,
}

const PASS: u8 = 1;
const FAIL: u8 = 2;

async fn gated(_: OrderPlaced, ctx: Context<Gate>) -> Result<(), HandlerError> {
    let gate = ctx.state();
    gate.runs.push(ctx.delivery_count());
    loop {
        match gate.mode.load(Ordering::SeqCst) {
            PASS => {
                gate.done.push(ctx.delivery_count());
                return Ok(());
            }
            FAIL => return Err(HandlerError::transient("downstream refused")),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// An instance of `group` that stops quickly (100 ms grace) and allows three
/// attempts, 50 ms apart.
async fn gated_instance(world: &World, group: &str, gate: &Gate) -> Running {
    let consumer = world
        .consumer(group)
        .retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(3))
        .shutdown_grace(Duration::from_millis(100))
        .pull_expiry(Duration::from_millis(500))
        .with_state(gate.clone())
        .handle(gated)
        .build()
        .await
        .unwrap();
    Running::start(consumer)
}

/// Starts `times` instances one after another, each stopped once the
/// handler has run once more: its event is Naked by the shutdown grace.
async fn restart_mid_handler(world: &World, group: &str, gate: &Gate, times: usize) {
    for restart in 1..=times {
        let running = gated_instance(world, group, gate).await;
        eventually("handler started", Duration::from_secs(20), || async {
            gate.runs.len() >= restart
        })
        .await;
        running.stop().await;
    }
}

/// Deliveries cut short by a shutdown are not attempts: an event whose
/// handler never failed survives ten restarts of its only instance (each
/// one stops it mid-handler, and the grace Naks it) and is then handled,
/// not dead-lettered as out of attempts.
#[tokio::test]
async fn ten_restarts_mid_handler_use_up_no_attempt() {
    let world = World::on_shared_server().await;
    let gate = Gate::default();
    world.publish(1).await;
    restart_mid_handler(&world, "patient", &gate, 10).await;
    gate.mode.store(PASS, Ordering::SeqCst);
    let running = gated_instance(&world, "patient", &gate).await;
    eventually("handled", Duration::from_secs(20), || async {
        gate.done.len() == 1
    })
    .await;
    world.wait_settled("patient").await;
    assert!(
        gate.done.items()[0] >= 11,
        "deliveries: {:?}",
        gate.done.items()
    );
    assert!(world
        .dead_letter_api()
        .list_for_consumer("patient", 10)
        .await
        .unwrap()
        .is_empty());
    running.stop().await;
}

/// Restarts and failures together: two deliveries cut short by restarts,
/// then a handler that always fails is dead-lettered after exactly the
/// policy's three failed runs, and the entry tells runs from deliveries.
#[tokio::test]
async fn attempts_count_failed_runs_not_deliveries() {
    let world = World::on_shared_server().await;
    let gate = Gate::default();
    world.publish(1).await;
    restart_mid_handler(&world, "counted", &gate, 2).await;
    gate.mode.store(FAIL, Ordering::SeqCst);
    let running = gated_instance(&world, "counted", &gate).await;
    let api = world.dead_letter_api();
    eventually("dead-lettered", Duration::from_secs(20), || async {
        api.list_for_consumer("counted", 10)
            .await
            .is_ok_and(|entries| !entries.is_empty())
    })
    .await;
    let entries = api.list_for_consumer("counted", 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].reason,
        jetevents::consume::DeadLetterReason::AttemptsExhausted
    );
    assert_eq!(entries[0].failed_runs, Some(3));
    assert_eq!(entries[0].delivery_count, 5);
    assert_eq!(gate.runs.items(), [1, 2, 3, 4, 5]);
    running.stop().await;
}
