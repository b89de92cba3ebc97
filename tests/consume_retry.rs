//! Retry, dead letters and failure handling against a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use jetevents::consume::{
    Context, DeadLetter, DeadLetterReason, HandlerError, RetryPolicy, UnhandledPolicy,
};
use jetevents::envelope::Envelope;

mod consume_common;
mod support;
use consume_common::{eventually, Log, OrderPlaced, Running, World};

/// Waits for the dead-letter entries of `group` to reach `count`.
async fn dead_letters_of(world: &World, group: &str, count: usize) -> Vec<DeadLetter> {
    let api = world.dead_letter_api();
    eventually("dead letters", Duration::from_secs(20), || async {
        api.list_for_consumer(group, 100)
            .await
            .map(|entries| entries.len() >= count)
            .unwrap_or(false)
    })
    .await;
    api.list_for_consumer(group, 100).await.unwrap()
}

#[tokio::test]
async fn transient_failure_is_redelivered_after_the_scheduled_delay() {
    let world = World::on_shared_server().await;
    let retry = RetryPolicy::exponential(Duration::from_millis(300), Duration::from_secs(5))
        .jitter(0.0)
        .max_attempts(5);
    let deliveries: Log<(u64, Instant)> = Log::default();
    let consumer = world
        .consumer("mailer")
        .retry(retry.clone())
        .with_state(deliveries.clone())
        .handle(
            |_: OrderPlaced, ctx: Context<Log<(u64, Instant)>>| async move {
                ctx.state().push((ctx.delivery_count(), Instant::now()));
                if ctx.delivery_count() < 3 {
                    return Err(HandlerError::transient("smtp relay down"));
                }
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;

    eventually("third delivery", Duration::from_secs(20), || async {
        deliveries.len() >= 3
    })
    .await;
    world.wait_settled("mailer").await;
    let seen = deliveries.items();
    let counts: Vec<u64> = seen.iter().map(|(count, _)| *count).collect();
    assert_eq!(counts, [1, 2, 3], "delivery counts");
    let first_gap = seen[1].1 - seen[0].1;
    let second_gap = seen[2].1 - seen[1].1;
    assert!(
        first_gap >= retry.min_delay(1),
        "first retry after {first_gap:?}"
    );
    assert!(
        second_gap >= retry.min_delay(2),
        "second retry after {second_gap:?}"
    );
    assert_eq!(retry.min_delay(2), Duration::from_millis(600));
    // Succeeded on the third attempt: nothing dead-lettered.
    assert!(world
        .dead_letter_api()
        .list_for_consumer("mailer", 10)
        .await
        .unwrap()
        .is_empty());
    running.stop().await;
}

#[tokio::test]
async fn last_attempt_dead_letters_with_the_reason_and_the_consumer_moves_on() {
    let world = World::on_shared_server().await;
    let handled: Log<(u64, u64)> = Log::default();
    let consumer = world
        .consumer("ledger")
        .retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(3))
        .with_state(handled.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(u64, u64)>>| async move {
                ctx.state().push((event.n, ctx.delivery_count()));
                if event.n == 13 {
                    return Err(HandlerError::transient("ledger locked"));
                }
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let poison_id = world.publish(13).await;
    world.publish(14).await;

    let entries = dead_letters_of(&world, "ledger", 1).await;
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(entry.error, "ledger locked");
    assert_eq!(entry.delivery_count, 3);
    assert_eq!(entry.failed_runs, Some(3));
    assert_eq!(entry.consumer, "ledger");
    assert_eq!(entry.original_stream, world.stream);
    assert_eq!(entry.original_subject, world.subject_of(13));
    assert!(entry.original_sequence > 0);
    assert!(entry.time.is_some());
    // The original event, headers and payload, is kept.
    let envelope = entry.envelope().unwrap();
    assert_eq!(envelope.id, poison_id);
    assert_eq!(envelope.decode_data::<OrderPlaced>().unwrap().n, 13);

    // The consumer moved on: 14 handled, 13 tried exactly three times, and
    // nothing left unacked.
    eventually("event 14 handled", Duration::from_secs(10), || async {
        handled.items().contains(&(14, 1))
    })
    .await;
    world.wait_settled("ledger").await;
    let attempts_of_13: Vec<u64> = handled
        .items()
        .into_iter()
        .filter(|(n, _)| *n == 13)
        .map(|(_, delivery)| delivery)
        .collect();
    assert_eq!(attempts_of_13, [1, 2, 3]);
    running.stop().await;
}

#[tokio::test]
async fn permanent_error_dead_letters_on_the_first_delivery() {
    let world = World::on_shared_server().await;
    let calls: Log<u64> = Log::default();
    let consumer = world
        .consumer("fraud")
        .with_state(calls.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Err(HandlerError::permanent(format!(
                "order {} is blocked",
                event.order
            )))
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(5).await;

    let entries = dead_letters_of(&world, "fraud", 1).await;
    assert_eq!(entries[0].reason, DeadLetterReason::Permanent);
    assert_eq!(entries[0].error, "order o-5 is blocked");
    assert_eq!(entries[0].delivery_count, 1);
    world.wait_settled("fraud").await;
    assert_eq!(calls.items(), [5]);
    running.stop().await;
}

#[tokio::test]
async fn undecodable_messages_are_dead_lettered_on_first_delivery() {
    let world = World::on_shared_server().await;
    let calls: Log<u64> = Log::default();
    let consumer = world
        .consumer("search")
        .with_state(calls.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let jetstream = world.client.jetstream().unwrap();

    // Not a CloudEvent at all.
    let mut headers = HeaderMap::new();
    headers.insert("X-Trace", "raw");
    jetstream
        .publish_with_headers(world.subject_of(1), headers, "\u{0}garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A CloudEvent whose data is not an OrderPlaced.
    let mut envelope = Envelope::new("/tests", "shop.order.placed.v1");
    envelope.data_content_type = Some("application/json".into());
    envelope.data = Some(r#"{"unexpected": true}"#.into());
    world
        .client
        .publisher()
        .publish_envelope(&world.subject_of(2), envelope.clone(), Default::default())
        .await
        .unwrap();
    // A good one after them.
    world.publish(3).await;

    let entries = dead_letters_of(&world, "search", 2).await;
    assert!(entries
        .iter()
        .all(|entry| entry.reason == DeadLetterReason::Undecodable && entry.delivery_count == 1));
    let raw = entries
        .iter()
        .find(|entry| entry.original_subject == world.subject_of(1))
        .unwrap();
    assert_eq!(&raw.payload[..], b"\x00garbage");
    assert_eq!(raw.headers.get("X-Trace").unwrap().as_str(), "raw");
    assert!(raw.envelope().is_err());
    let bad_data = entries
        .iter()
        .find(|entry| entry.original_subject == world.subject_of(2))
        .unwrap();
    assert_eq!(bad_data.envelope().unwrap().id, envelope.id);
    assert!(!bad_data.error.is_empty());

    world.wait_settled("search").await;
    assert_eq!(calls.items(), [3]);
    running.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_does_not_stop_the_runner() {
    let world = World::on_shared_server().await;
    let handled: Log<(u64, u64)> = Log::default();
    let consumer = world
        .consumer("panicky")
        .retry(RetryPolicy::fixed(Duration::from_millis(50)))
        .with_state(handled.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(u64, u64)>>| async move {
                if event.n.is_multiple_of(2) && ctx.delivery_count() == 1 {
                    panic!("boom on {}", event.n);
                }
                ctx.state().push((event.n, ctx.delivery_count()));
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    for n in 0..6 {
        world.publish(n).await;
    }
    eventually("all handled", Duration::from_secs(20), || async {
        handled.len() >= 6
    })
    .await;
    world.wait_settled("panicky").await;
    let mut seen = handled.items();
    seen.sort_unstable();
    // Panicked ones came back as a second delivery (transient).
    assert_eq!(seen, [(0, 2), (1, 1), (2, 2), (3, 1), (4, 2), (5, 1)]);
    assert!(!running.is_finished());
    running.stop().await;
}

/// A deliberate policy dead-letters an unhandled type only after it has been
/// left for other instances for the wait it sets: Naked with delays 250 ms,
/// 500 ms, 1 s, 2 s, dead-lettered on the fifth delivery (3.75 s left).
#[tokio::test]
async fn unhandled_types_follow_the_policy() {
    let world = World::on_shared_server().await;
    let consumer = world
        .consumer("strict")
        .unhandled(UnhandledPolicy::DeadLetterAfter(Duration::from_secs(3)))
        .filter_subject(format!("{}.shop.>", world.client.subjects().env()))
        .handle(|_: OrderPlaced, _: Context| async { Ok(()) })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world
        .client
        .publisher()
        .publish(&consume_common::OrderShipped {
            order: "o-1".into(),
        })
        .await
        .unwrap();
    let entries = dead_letters_of(&world, "strict", 1).await;
    assert_eq!(entries[0].reason, DeadLetterReason::Unhandled);
    assert!(entries[0].error.contains("shop.order.shipped.v1"));
    assert_eq!(entries[0].delivery_count, 5);
    assert_eq!(entries[0].failed_runs, None);
    running.stop().await;
}

#[tokio::test]
async fn dead_letters_can_be_inspected_redriven_and_deleted() {
    let world = World::on_shared_server().await;
    let handled: Log<(String, u64)> = Log::default();
    let consumer = world
        .consumer("invoices")
        .with_state(handled.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(String, u64)>>| async move {
                // The first copy of every event fails; a redriven one succeeds.
                if ctx.stream_sequence() < Some(3) {
                    return Err(HandlerError::permanent("template missing"));
                }
                ctx.state().push((ctx.id().to_owned(), event.n));
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let first = world.publish(1).await;
    world.publish(2).await;

    let api = world.dead_letter_api();
    let entries = dead_letters_of(&world, "invoices", 2).await;
    assert_eq!(entries.len(), 2);
    let inspected = api.get(entries[0].sequence).await.unwrap();
    assert_eq!(inspected.envelope().unwrap().id, first);
    assert_eq!(inspected.reason, DeadLetterReason::Permanent);

    // Redrive the first: stored again on its subject (stream sequence 3, so
    // the handler accepts it), same event id, entry gone.
    let redriven = api.redrive(entries[0].sequence).await.unwrap();
    assert_eq!(redriven.stream, world.stream);
    assert_eq!(redriven.subject, world.subject_of(1));
    assert_eq!(redriven.sequence, 3);
    eventually(
        "redriven event handled",
        Duration::from_secs(10),
        || async { handled.items().contains(&(first.clone(), 1)) },
    )
    .await;
    assert!(api.get(entries[0].sequence).await.is_err());

    // Delete the second.
    api.delete(entries[1].sequence).await.unwrap();
    assert!(api
        .list_for_consumer("invoices", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(api.delete(entries[1].sequence).await.is_err());
    running.stop().await;
}
