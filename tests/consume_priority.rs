//! Priority groups against a real server (ADR-42, overflow policy): a
//! standby instance gets events only once the primary falls behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use jetevents::consume::{Context, HandlerError, Priority};
use tokio::sync::Semaphore;

mod consume_common;
mod support;
use consume_common::{eventually, Log, OrderPlaced, Running, World};

const GROUP: &str = "fulfilment";
const PRIORITY_GROUP: &str = "workers";
const MIN_PENDING: usize = 10;

/// What one instance handled, and the permits its handler waits for.
#[derive(Clone)]
struct Instance {
    handled: Log<u64>,
    permits: Arc<Semaphore>,
}

impl Instance {
    fn new(permits: usize) -> Self {
        Self {
            handled: Log::default(),
            permits: Arc::new(Semaphore::new(permits)),
        }
    }
}

async fn handle(event: OrderPlaced, ctx: Context<Instance>) -> Result<(), HandlerError> {
    let instance = ctx.state();
    instance.permits.acquire().await.unwrap().forget();
    instance.handled.push(event.n);
    Ok(())
}

async fn start(
    world: &World,
    instance: &Instance,
    priority: Priority,
    concurrency: usize,
) -> Running {
    let consumer = world
        .consumer(GROUP)
        .concurrency(concurrency)
        .prefetch(1)
        .priority(priority)
        .with_state(instance.clone())
        .handle(handle)
        .build()
        .await
        .unwrap();
    Running::start(consumer)
}

#[tokio::test]
async fn a_standby_gets_events_only_once_the_primary_is_min_pending_behind() {
    let world = World::on_shared_server().await;
    // The primary is stuck in its first handler until released.
    let primary = Instance::new(0);
    let standby = Instance::new(usize::MAX >> 4);
    let primary_run = start(
        &world,
        &primary,
        Priority::overflow_primary(PRIORITY_GROUP),
        1,
    )
    .await;
    let standby_run = start(
        &world,
        &standby,
        Priority::overflow_standby(PRIORITY_GROUP, MIN_PENDING),
        8,
    )
    .await;

    for n in 0..5 {
        world.publish(n).await;
    }
    // The primary holds two (one running, one prefetched); the other three
    // stay pending, fewer than the standby's threshold. An event the
    // standby took would be acked and never make these counts.
    eventually(
        "primary holds two, three pending",
        Duration::from_secs(20),
        || async { world.consumer_counts(GROUP).await == (3, 2) },
    )
    .await;
    assert!(standby.handled.items().is_empty());

    for n in 5..25 {
        world.publish(n).await;
    }
    // 23 pending: the standby takes events until fewer than MIN_PENDING are left.
    eventually(
        "standby took the overflow",
        Duration::from_secs(20),
        || async { world.consumer_counts(GROUP).await == (MIN_PENDING as u64 - 1, 2) },
    )
    .await;
    assert_eq!(standby.handled.len(), 23 - (MIN_PENDING - 1));

    primary.permits.add_permits(usize::MAX >> 4);
    world.wait_settled(GROUP).await;
    let mut handled = primary.handled.items();
    handled.extend(standby.handled.items());
    handled.sort_unstable();
    assert_eq!(handled, (0..25).collect::<Vec<_>>());
    primary_run.stop().await;
    standby_run.stop().await;
}

#[tokio::test]
async fn a_lower_level_gets_events_only_while_no_higher_level_pull_waits() {
    let world = World::on_shared_server().await;
    // Level 0 holds what it gets: one running, one prefetched, then it
    // has no pull left open.
    let first = Instance::new(0);
    let second = Instance::new(usize::MAX >> 4);
    let first_run = start(&world, &first, Priority::prioritized(PRIORITY_GROUP, 0), 1).await;
    let second_run = start(&world, &second, Priority::prioritized(PRIORITY_GROUP, 1), 8).await;

    // Both levels wait with a pull each: the events go to level 0.
    for n in 0..2 {
        let waiting_pulls = || async {
            let info = world.stream().await.consumer_info(GROUP).await.unwrap();
            info.num_waiting >= 2
        };
        eventually(
            "both levels pulling",
            Duration::from_secs(20),
            waiting_pulls,
        )
        .await;
        world.publish(n).await;
        // Level 1 would ack at once, and never leave these counts.
        eventually("level 0 holds it", Duration::from_secs(20), || async {
            world.consumer_counts(GROUP).await == (0, n as usize + 1)
        })
        .await;
    }
    assert!(second.handled.items().is_empty());

    // Level 0 has no pull open: level 1 takes the rest.
    for n in 2..7 {
        world.publish(n).await;
    }
    eventually("level 1 took the rest", Duration::from_secs(20), || async {
        second.handled.len() == 5
    })
    .await;
    let mut taken = second.handled.items();
    taken.sort_unstable();
    assert_eq!(taken, (2..7).collect::<Vec<_>>());

    first.permits.add_permits(2);
    world.wait_settled(GROUP).await;
    first_run.stop().await;
    second_run.stop().await;
}
