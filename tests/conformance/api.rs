//! Level 1: what a service sees through jetevents' public API (client,
//! publisher, consumer, streams, dead letters), written once for both
//! transports.

use std::future::Future;
use std::time::Duration;

use jetevents::consume::{ConsumerBuilder, Context, DeadLetterReason, HandlerError, RetryPolicy};
use jetevents::publish::{PublishErrorKind, PublishOptions};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::world::{Setup, LIMIT};
use crate::consume_common::{eventually, order, Log, OrderPlaced, Running};

/// The retry delay of the cases that measure one: short for the real
/// server, long enough to tell a delayed redelivery from an immediate one.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// The retry delay of the cases that only need a retry.
const SHORT_DELAY: Duration = Duration::from_millis(100);

/// `OrderPlaced`'s type with data the handler cannot decode (no `n`).
#[derive(Serialize, Deserialize)]
struct MalformedOrder {
    order: String,
}

impl jetevents::Event for MalformedOrder {
    const TYPE: &'static str = OrderPlaced::TYPE;
    fn key(&self) -> Option<String> {
        Some(self.order.clone())
    }
}

/// An event of a domain no stream captures.
#[derive(Serialize, Deserialize)]
struct Unstored;

impl jetevents::Event for Unstored {
    const TYPE: &'static str = "nowhere.thing.happened.v1";
}

/// An event of the stream's domain with room for a big payload.
#[derive(Serialize, Deserialize)]
struct Attachment {
    data: String,
}

impl jetevents::Event for Attachment {
    const TYPE: &'static str = "shop.order.attached.v1";
}

/// What a handler saw of one run: the event's `n`, its delivery count and
/// when (tokio's clock).
type Run = (u64, u64, Instant);

/// Starts an instance of `group`, set up by `configure`; its handler logs
/// each run and answers with `answer(runs so far, this one included)`.
async fn start<F, Fut>(
    setup: &Setup,
    group: &str,
    configure: impl FnOnce(ConsumerBuilder<()>) -> ConsumerBuilder<()>,
    answer: F,
) -> (Running, Log<Run>)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let runs = Log::<Run>::default();
    let seen = runs.clone();
    let consumer = configure(setup.world.consumer(group))
        .handle(move |event: OrderPlaced, ctx: Context<()>| {
            seen.push((event.n, ctx.delivery_count(), Instant::now()));
            answer(seen.len())
        })
        .build()
        .await
        .unwrap();
    (Running::start(consumer), runs)
}

/// Keeps the consumer's defaults.
fn defaults(builder: ConsumerBuilder<()>) -> ConsumerBuilder<()> {
    builder
}

/// Retries after `delay`, without jitter (it would shorten the delay).
fn retry_after(delay: Duration) -> impl FnOnce(ConsumerBuilder<()>) -> ConsumerBuilder<()> {
    move |builder| builder.retry(RetryPolicy::fixed(delay).jitter(0.0))
}

/// A handler's answer: success.
async fn succeed(_: usize) -> Result<(), HandlerError> {
    Ok(())
}

/// A handler's answer: a transient failure, for ever.
async fn fail(_: usize) -> Result<(), HandlerError> {
    Err(HandlerError::transient("downstream unavailable"))
}

/// A handler's answer: a transient failure on the first `failures` runs.
fn fail_first(
    failures: usize,
) -> impl Fn(usize) -> std::future::Ready<Result<(), HandlerError>> + Clone {
    move |run| {
        std::future::ready(if run <= failures {
            Err(HandlerError::transient("downstream unavailable"))
        } else {
            Ok(())
        })
    }
}

/// Waits until `runs` holds `count` runs.
async fn wait_runs(runs: &Log<Run>, count: usize) {
    eventually("handler runs", LIMIT, || async { runs.len() >= count }).await;
}

/// The events' `n`, in the order of the runs.
fn handled(runs: &Log<Run>) -> Vec<u64> {
    runs.items().iter().map(|run| run.0).collect()
}

/// The delays between consecutive runs.
fn gaps(runs: &Log<Run>) -> Vec<Duration> {
    let runs = runs.items();
    runs.windows(2).map(|pair| pair[1].2 - pair[0].2).collect()
}

/// An event handled successfully is acked: settled, handled once, no dead letter.
pub async fn ack(setup: Setup) {
    let (running, runs) = start(&setup, "ack", defaults, succeed).await;
    setup.world.publish(1).await;
    wait_runs(&runs, 1).await;
    setup.wait_settled("ack").await;
    running.stop().await;
    assert_eq!(handled(&runs), [1]);
    assert!(setup.dead_letters().await.is_empty());
}

/// A transient failure comes back after the retry policy's delay, not before.
pub async fn retry_policy_delay(setup: Setup) {
    let (running, runs) = start(&setup, "delay", retry_after(RETRY_DELAY), fail_first(1)).await;
    setup.world.publish(1).await;
    wait_runs(&runs, 2).await;
    setup.wait_settled("delay").await;
    running.stop().await;
    let gaps = gaps(&runs);
    assert!(gaps[0] >= RETRY_DELAY, "retried after {gaps:?}");
}

/// A handler's retry-after replaces the policy's delay.
pub async fn handler_retry_after(setup: Setup) {
    let answer = |run: usize| async move {
        if run == 1 {
            Err(HandlerError::transient("rate limited").retry_after(RETRY_DELAY))
        } else {
            Ok(())
        }
    };
    let (running, runs) = start(&setup, "after", retry_after(SHORT_DELAY), answer).await;
    setup.world.publish(1).await;
    wait_runs(&runs, 2).await;
    setup.wait_settled("after").await;
    running.stop().await;
    let gaps = gaps(&runs);
    assert!(gaps[0] >= RETRY_DELAY, "retried after {gaps:?}");
}

/// The handler sees the delivery count grow with each redelivery.
pub async fn redelivery_count(setup: Setup) {
    let (running, runs) = start(&setup, "count", retry_after(SHORT_DELAY), fail_first(2)).await;
    setup.world.publish(1).await;
    wait_runs(&runs, 3).await;
    setup.wait_settled("count").await;
    running.stop().await;
    let counts: Vec<u64> = runs.items().iter().map(|run| run.1).collect();
    assert_eq!(counts, [1, 2, 3]);
}

/// The last failed attempt ends in a dead letter that counts the failed runs.
pub async fn attempts_exhausted(setup: Setup) {
    let policy = RetryPolicy::fixed(SHORT_DELAY).max_attempts(3);
    let (running, runs) = start(&setup, "exhaust", |b| b.retry(policy), fail).await;
    let id = setup.world.publish(1).await;
    let dead = setup.wait_dead_letters(1).await;
    setup.wait_settled("exhaust").await;
    running.stop().await;
    assert_eq!(runs.len(), 3);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(dead[0].failed_runs, Some(3));
    assert_eq!(dead[0].consumer, "exhaust");
    assert_eq!(dead[0].envelope().unwrap().id, id);
}

/// A permanent failure is dead-lettered at once, without a retry.
pub async fn permanent_error(setup: Setup) {
    let answer = |_| async { Err(HandlerError::permanent("invalid order")) };
    let (running, runs) = start(&setup, "perm", retry_after(SHORT_DELAY), answer).await;
    setup.world.publish(1).await;
    let dead = setup.wait_dead_letters(1).await;
    setup.wait_settled("perm").await;
    running.stop().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::Permanent);
}

/// Data the handler's type cannot decode is dead-lettered without a run.
pub async fn undecodable_data(setup: Setup) {
    let (running, runs) = start(&setup, "undec", defaults, succeed).await;
    let malformed = MalformedOrder {
        order: "o-1".to_owned(),
    };
    let publisher = setup.world.client.publisher();
    let receipt = publisher.publish(&malformed).await.unwrap();
    let dead = setup.wait_dead_letters(1).await;
    setup.wait_settled("undec").await;
    running.stop().await;
    assert_eq!(runs.len(), 0);
    assert_eq!(dead[0].reason, DeadLetterReason::Undecodable);
    assert_eq!(dead[0].original_sequence, receipt.sequence);
}

/// The same event id twice within the duplicate window is stored once: the
/// second publish is a duplicate with the first one's sequence, and the
/// event is delivered once.
pub async fn dedup_by_event_id(setup: Setup) {
    let (running, runs) = start(&setup, "dedup", defaults, succeed).await;
    let publisher = setup.world.client.publisher();
    let options = PublishOptions::new().id("order-1-placed");
    let first = publisher
        .publish_with(&order(1), options.clone())
        .await
        .unwrap();
    let second = publisher.publish_with(&order(1), options).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
    // A later event: once it is handled, the duplicate had its chance.
    setup.world.publish(2).await;
    wait_runs(&runs, 2).await;
    setup.wait_settled("dedup").await;
    running.stop().await;
    assert_eq!(handled(&runs), [1, 2]);
}

/// A publish expecting the subject's last sequence is stored; one expecting
/// an outdated sequence is a conflict that says the actual one.
pub async fn expected_last_subject_sequence(setup: Setup) {
    let publisher = setup.world.client.publisher();
    let first = publisher.publish(&order(1)).await.unwrap();
    let expecting_first = PublishOptions::new().expected_last_subject_sequence(first.sequence);
    let second = publisher
        .publish_with(&order(1), expecting_first.clone())
        .await
        .unwrap();
    assert!(second.sequence > first.sequence);
    let err = publisher
        .publish_with(&order(1), expecting_first)
        .await
        .unwrap_err();
    match err.kind() {
        PublishErrorKind::Conflict { expected, actual } => {
            assert_eq!(*expected, first.sequence);
            assert_eq!(*actual, Some(second.sequence));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A subject no stream captures is `NoStream`.
pub async fn missing_stream(setup: Setup) {
    let publisher = setup.world.client.publisher();
    let err = publisher.publish(&Unstored).await.unwrap_err();
    assert!(
        matches!(err.kind(), PublishErrorKind::NoStream { subject } if subject.contains(<Unstored as jetevents::Event>::TYPE)),
        "{err:?}"
    );
}

/// An event over the server's max payload (1 MiB) is refused, not sent.
pub async fn oversized_event(setup: Setup) {
    let attachment = Attachment {
        data: "x".repeat(2 * 1024 * 1024),
    };
    let publisher = setup.world.client.publisher();
    let err = publisher.publish(&attachment).await.unwrap_err();
    match err.kind() {
        PublishErrorKind::PayloadTooLarge { size, limit } => {
            assert_eq!(*limit, 1024 * 1024);
            assert!(size > limit);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
}

/// Two instances of one group share its events: each is handled once in total.
pub async fn group_sharing(setup: Setup) {
    let (first, first_runs) = start(&setup, "shared", defaults, succeed).await;
    let (second, second_runs) = start(&setup, "shared", defaults, succeed).await;
    for n in 1..=10 {
        setup.world.publish(n).await;
    }
    eventually("ten runs", LIMIT, || async {
        first_runs.len() + second_runs.len() >= 10
    })
    .await;
    setup.wait_settled("shared").await;
    first.stop().await;
    second.stop().await;
    let mut all = handled(&first_runs);
    all.extend(handled(&second_runs));
    all.sort();
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
}

/// Two groups each get every event.
pub async fn two_groups(setup: Setup) {
    let (billing, billing_runs) = start(&setup, "billing", defaults, succeed).await;
    let (shipping, shipping_runs) = start(&setup, "shipping", defaults, succeed).await;
    for n in 1..=3 {
        setup.world.publish(n).await;
    }
    setup.wait_settled("billing").await;
    setup.wait_settled("shipping").await;
    billing.stop().await;
    shipping.stop().await;
    for runs in [billing_runs, shipping_runs] {
        let mut all = handled(&runs);
        all.sort();
        assert_eq!(all, [1, 2, 3]);
    }
}

/// With one handler at a time, events of one subject are handled in the
/// order they were stored.
pub async fn ordering_within_a_subject(setup: Setup) {
    let (running, runs) = start(&setup, "ordered", |b| b.concurrency(1), succeed).await;
    let publisher = setup.world.client.publisher();
    for n in 1..=5 {
        let same_order = OrderPlaced {
            order: "o-1".to_owned(),
            n,
        };
        publisher.publish(&same_order).await.unwrap();
    }
    wait_runs(&runs, 5).await;
    setup.wait_settled("ordered").await;
    running.stop().await;
    assert_eq!(handled(&runs), [1, 2, 3, 4, 5]);
}

/// An instance stopped with its handler blocked gives the event back; the
/// next instance of the group handles it, once.
pub async fn shutdown_in_flight(setup: Setup) {
    let blocked = |_| std::future::pending::<Result<(), HandlerError>>();
    let short_grace = |b: ConsumerBuilder<()>| b.shutdown_grace(SHORT_DELAY);
    let (stopping, stopped_runs) = start(&setup, "drain", short_grace, blocked).await;
    setup.world.publish(1).await;
    wait_runs(&stopped_runs, 1).await;
    stopping.stop().await;
    let (next, next_runs) = start(&setup, "drain", defaults, succeed).await;
    wait_runs(&next_runs, 1).await;
    setup.wait_settled("drain").await;
    next.stop().await;
    assert_eq!(stopped_runs.len(), 1);
    let runs = next_runs.items();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].0, runs[0].1),
        (1, 2),
        "event 1 on its second delivery"
    );
    assert!(setup.dead_letters().await.is_empty());
}
