//! Unit tests of the engine, on paused tokio time: each checks one rule the
//! real server has.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::header::{
    NATS_EXPECTED_LAST_MESSAGE_ID, NATS_EXPECTED_LAST_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::time::advance;

use super::*;

const STREAM: &str = "ORDERS";
const DURABLE: &str = "billing";

fn engine() -> MemoryJetStream {
    let js = MemoryJetStream::new();
    js.create_stream(StreamConfig::new(STREAM, ["orders.>"]))
        .unwrap();
    js
}

fn engine_with_consumer(config: ConsumerConfig) -> MemoryJetStream {
    let js = engine();
    js.create_consumer(STREAM, config).unwrap();
    js
}

fn publish(js: &MemoryJetStream, subject: &str) -> u64 {
    js.publish(subject, None, Bytes::from_static(b"{}"))
        .unwrap()
        .sequence
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

fn publish_with(
    js: &MemoryJetStream,
    subject: &str,
    pairs: &[(&str, &str)],
) -> Result<PublishAck, PublishError> {
    js.publish(subject, Some(&headers(pairs)), Bytes::from_static(b"{}"))
}

fn next_now(js: &MemoryJetStream) -> Option<Delivery> {
    js.try_next(STREAM, DURABLE)
}

/// The stream sequence and delivery count of the next delivery, if any.
fn next_sequence(js: &MemoryJetStream) -> Option<(u64, u64)> {
    next_now(js).map(|delivery| (delivery.info().stream_sequence, delivery.info().delivered))
}

fn info(js: &MemoryJetStream) -> ConsumerInfo {
    js.consumer_info(STREAM, DURABLE).unwrap()
}

// ---- streams and publishing ----

#[tokio::test(start_paused = true)]
async fn publish_stores_captured_subjects_in_order_and_refuses_others() {
    let js = engine();
    assert_eq!(publish(&js, "orders.created"), 1);
    assert_eq!(publish(&js, "orders.paid"), 2);
    let err = js.publish("payments.done", None, Bytes::new()).unwrap_err();
    assert_eq!(err.kind(), &PublishErrorKind::NoStream);
    let subjects: Vec<_> = js.messages(STREAM).into_iter().map(|m| m.subject).collect();
    assert_eq!(subjects, ["orders.created", "orders.paid"]);
    assert_eq!(js.stream_for_subject("orders.x.y").as_deref(), Some(STREAM));
}

#[tokio::test(start_paused = true)]
async fn create_stream_is_idempotent_and_refuses_overlaps_and_other_configs() {
    let js = engine();
    js.create_stream(StreamConfig::new(STREAM, ["orders.>"]))
        .unwrap();
    let other = js
        .create_stream(StreamConfig::new(STREAM, ["orders.*"]))
        .unwrap_err();
    assert_eq!(other.kind(), &MemoryErrorKind::StreamNameInUse);
    let overlap = js
        .create_stream(StreamConfig::new("AUDIT", ["*.created"]))
        .unwrap_err();
    assert_eq!(overlap.kind(), &MemoryErrorKind::SubjectsOverlap);
    assert_eq!(
        overlap.to_string(),
        "subjects overlap with an existing stream"
    );
}

#[tokio::test(start_paused = true)]
async fn duplicate_id_within_the_window_answers_the_original_sequence() {
    let js = engine();
    let first = publish_with(&js, "orders.created", &[(NATS_MESSAGE_ID.as_ref(), "a")]).unwrap();
    publish(&js, "orders.other");
    let again = publish_with(&js, "orders.created", &[(NATS_MESSAGE_ID.as_ref(), "a")]).unwrap();
    assert_eq!((again.sequence, again.duplicate), (first.sequence, true));
    assert_eq!(js.messages(STREAM).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn duplicate_id_after_the_window_is_stored_again() {
    let js = engine();
    publish_with(&js, "orders.created", &[(NATS_MESSAGE_ID.as_ref(), "a")]).unwrap();
    advance(Duration::from_secs(120)).await;
    let again = publish_with(&js, "orders.created", &[(NATS_MESSAGE_ID.as_ref(), "a")]).unwrap();
    assert_eq!((again.sequence, again.duplicate), (2, false));
}

#[tokio::test(start_paused = true)]
async fn expected_stream_and_last_sequence_are_checked() {
    let js = engine();
    publish(&js, "orders.created");
    let mismatch =
        publish_with(&js, "orders.a", &[(NATS_EXPECTED_STREAM.as_ref(), "OTHER")]).unwrap_err();
    assert_eq!(mismatch.to_string(), "expected stream does not match");
    let wrong = publish_with(
        &js,
        "orders.a",
        &[(NATS_EXPECTED_LAST_SEQUENCE.as_ref(), "0")],
    )
    .unwrap_err();
    assert_eq!(
        wrong.kind(),
        &PublishErrorKind::WrongLastSequence { actual: 1 }
    );
    assert_eq!(wrong.to_string(), "wrong last sequence: 1");
    publish_with(
        &js,
        "orders.a",
        &[(NATS_EXPECTED_LAST_SEQUENCE.as_ref(), "1")],
    )
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn expected_last_subject_sequence_uses_the_subject_or_its_filter() {
    let js = engine();
    publish(&js, "orders.1.created"); // 1
    publish(&js, "orders.2.created"); // 2
    let expect = NATS_EXPECTED_LAST_SUBJECT_SEQUENCE.as_ref();
    let wrong = publish_with(&js, "orders.1.paid", &[(expect, "1")]).unwrap_err();
    assert_eq!(
        wrong.kind(),
        &PublishErrorKind::WrongLastSequence { actual: 0 }
    );
    let filtered = [
        (expect, "1"),
        (NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT, "orders.1.*"),
    ];
    assert_eq!(
        publish_with(&js, "orders.1.paid", &filtered)
            .unwrap()
            .sequence,
        3
    );
    let stale = publish_with(&js, "orders.1.shipped", &filtered).unwrap_err();
    assert_eq!(
        stale.kind(),
        &PublishErrorKind::WrongLastSequence { actual: 3 }
    );
    let missing = publish_with(&js, "orders.1.x", &filtered[1..]).unwrap_err();
    assert_eq!(
        missing.kind(),
        &PublishErrorKind::MissingLastSubjectSequence
    );
}

#[tokio::test(start_paused = true)]
async fn expected_last_msg_id_is_checked_after_dedup() {
    let js = engine();
    publish_with(&js, "orders.a", &[(NATS_MESSAGE_ID.as_ref(), "one")]).unwrap();
    let expect = NATS_EXPECTED_LAST_MESSAGE_ID.as_ref();
    let wrong = publish_with(&js, "orders.b", &[(expect, "zero")]).unwrap_err();
    assert_eq!(wrong.to_string(), "wrong last msg ID: one");
    publish_with(
        &js,
        "orders.b",
        &[(expect, "one"), (NATS_MESSAGE_ID.as_ref(), "two")],
    )
    .unwrap();
    // A retry of the same publish is a duplicate, not a failed expectation.
    let retry = publish_with(
        &js,
        "orders.b",
        &[(expect, "one"), (NATS_MESSAGE_ID.as_ref(), "two")],
    )
    .unwrap();
    assert!(retry.duplicate);
}

#[tokio::test(start_paused = true)]
async fn messages_over_max_payload_are_refused() {
    let js = MemoryJetStream::with_max_payload(16);
    js.create_stream(StreamConfig::new(STREAM, ["orders.>"]))
        .unwrap();
    js.publish("orders.a", None, Bytes::from_static(&[0; 16]))
        .unwrap();
    let err = js
        .publish(
            "orders.a",
            Some(&headers(&[("k", "v")])),
            Bytes::from_static(&[0; 4]),
        )
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &PublishErrorKind::MaxPayloadExceeded {
            limit: 16,
            size: 22
        }
    );
}

// ---- consumer configuration ----

#[tokio::test(start_paused = true)]
async fn consumer_config_is_validated_like_the_server() {
    let js = engine();
    let mut backoff = ConsumerConfig::new(DURABLE);
    backoff.backoff = vec![Duration::from_secs(1); 3];
    backoff.max_deliver = 2;
    let err = js.create_consumer(STREAM, backoff.clone()).unwrap_err();
    assert_eq!(err.kind(), &MemoryErrorKind::MaxDeliverBackoff);
    backoff.max_deliver = 3;
    let created = js.create_consumer(STREAM, backoff).unwrap();
    assert_eq!(
        created.config.ack_wait,
        Duration::from_secs(1),
        "backoff[0] replaces ack wait"
    );

    let mut overlapping = ConsumerConfig::new("other");
    overlapping.filter_subjects = vec!["orders.*".into(), "orders.a".into()];
    let err = js.create_consumer(STREAM, overlapping).unwrap_err();
    assert_eq!(err.kind(), &MemoryErrorKind::OverlappingFilterSubjects);

    let mut moved = ConsumerConfig::new(DURABLE);
    moved.deliver_policy = DeliverPolicy::New;
    let err = js.create_consumer(STREAM, moved).unwrap_err();
    assert_eq!(err.to_string(), "deliver policy can not be updated");
}

// ---- delivery ----

#[tokio::test(start_paused = true)]
async fn a_filtered_consumer_gets_only_matching_messages_in_order() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.filter_subjects = vec!["orders.*.paid".into()];
    let js = engine_with_consumer(config);
    for subject in [
        "orders.1.created",
        "orders.1.paid",
        "orders.2.created",
        "orders.2.paid",
    ] {
        publish(&js, subject);
    }
    assert_eq!(info(&js).num_pending, 2);
    assert_eq!(next_sequence(&js), Some((2, 1)));
    assert_eq!(next_sequence(&js), Some((4, 1)));
    assert_eq!(next_sequence(&js), None);
}

#[tokio::test(start_paused = true)]
async fn deliver_new_skips_what_was_stored_before() {
    let js = engine();
    publish(&js, "orders.old");
    let mut config = ConsumerConfig::new(DURABLE);
    config.deliver_policy = DeliverPolicy::New;
    js.create_consumer(STREAM, config).unwrap();
    publish(&js, "orders.new");
    assert_eq!(next_sequence(&js), Some((2, 1)));
}

#[tokio::test(start_paused = true)]
async fn an_unacked_delivery_is_redelivered_after_the_ack_wait_before_new_ones() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    publish(&js, "orders.a");
    let first = next_now(&js).unwrap();
    publish(&js, "orders.b");
    advance(Duration::from_secs(29)).await;
    assert_eq!(next_sequence(&js), Some((2, 1)), "not due yet: the new one");
    advance(Duration::from_secs(1)).await;
    publish(&js, "orders.c");
    let again = next_now(&js).unwrap();
    assert_eq!(
        (again.info().stream_sequence, again.info().delivered),
        (1, 2)
    );
    assert!(again.info().consumer_sequence > first.info().consumer_sequence);
    assert_eq!(info(&js).num_redelivered, 1);
    assert_eq!(next_sequence(&js), Some((3, 1)), "then the new one");
}

#[tokio::test(start_paused = true)]
async fn a_nak_without_delay_redelivers_at_once_and_with_delay_after_it() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    publish(&js, "orders.a");
    next_now(&js).unwrap().nak(None).unwrap();
    let again = next_now(&js).unwrap();
    assert_eq!(again.info().delivered, 2);
    again.nak(Some(Duration::from_secs(5))).unwrap();
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(next_sequence(&js), None);
    advance(Duration::from_millis(1)).await;
    assert_eq!(next_sequence(&js), Some((1, 3)));
}

#[tokio::test(start_paused = true)]
async fn in_progress_starts_the_ack_wait_again() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    publish(&js, "orders.a");
    let delivery = next_now(&js).unwrap();
    advance(Duration::from_secs(20)).await;
    delivery.in_progress().unwrap();
    advance(Duration::from_secs(20)).await;
    assert_eq!(
        next_sequence(&js),
        None,
        "40 s after delivery, 20 s after progress"
    );
    advance(Duration::from_secs(10)).await;
    assert_eq!(next_sequence(&js), Some((1, 2)));
}

#[tokio::test(start_paused = true)]
async fn backoff_sets_the_wait_after_each_delivery_and_repeats_its_last_step() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.backoff = vec![Duration::from_secs(1), Duration::from_secs(10)];
    let js = engine_with_consumer(config);
    publish(&js, "orders.a");
    let mut waits = Vec::new();
    let mut delivered = next_now(&js).map(|d| d.info().delivered);
    while delivered < Some(4) {
        let mut waited = 0;
        loop {
            advance(Duration::from_secs(1)).await;
            waited += 1;
            if let Some(delivery) = next_now(&js) {
                delivered = Some(delivery.info().delivered);
                break;
            }
        }
        waits.push(waited);
    }
    assert_eq!(waits, [1, 10, 10]);
}

#[tokio::test(start_paused = true)]
async fn a_nak_delay_under_backoff_counts_from_the_current_step_like_the_server() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.backoff = vec![Duration::from_secs(1), Duration::from_secs(10)];
    let js = engine_with_consumer(config);
    publish(&js, "orders.a");
    next_now(&js).unwrap().nak(None).unwrap();
    // Second delivery: the step is 10 s, ack wait (backoff[0]) 1 s.
    next_now(&js)
        .unwrap()
        .nak(Some(Duration::from_secs(5)))
        .unwrap();
    advance(Duration::from_secs(13)).await;
    assert_eq!(next_sequence(&js), None);
    advance(Duration::from_secs(1)).await;
    assert_eq!(next_sequence(&js), Some((1, 3)));
}

#[tokio::test(start_paused = true)]
async fn after_max_deliver_the_message_stops_with_an_advisory_and_leaves_pending() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.max_deliver = 2;
    let js = engine_with_consumer(config);
    let mut advisories = js.advisories();
    publish(&js, "orders.a");
    next_now(&js).unwrap().nak(None).unwrap();
    next_now(&js).unwrap().nak(None).unwrap();
    assert_eq!(next_sequence(&js), None);
    let advisory = advisories.try_recv().unwrap();
    assert!(matches!(advisory, Advisory::Nak { .. }));
    advisories.try_recv().unwrap();
    assert_eq!(
        advisories.try_recv().unwrap(),
        Advisory::MaxDeliveries {
            stream: STREAM.into(),
            consumer: DURABLE.into(),
            stream_sequence: 1,
            deliveries: 2,
        }
    );
    let state = info(&js);
    assert_eq!(state.num_ack_pending, 0);
    // Not acked: the ack floor stays, as on the server.
    assert_eq!(state.ack_floor.stream_sequence, 0);
    advance(Duration::from_secs(3600)).await;
    assert_eq!(next_sequence(&js), None);
}

#[tokio::test(start_paused = true)]
async fn max_deliver_of_one_ends_when_the_ack_wait_runs_out() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.max_deliver = 1;
    let js = engine_with_consumer(config);
    let mut advisories = js.advisories();
    publish(&js, "orders.a");
    next_now(&js).unwrap();
    advance(Duration::from_secs(30)).await;
    assert_eq!(info(&js).num_ack_pending, 0);
    assert!(matches!(
        advisories.try_recv().unwrap(),
        Advisory::MaxDeliveries { deliveries: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_terminated_message_is_never_redelivered_and_is_advised() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    let mut advisories = js.advisories();
    publish(&js, "orders.a");
    next_now(&js).unwrap().term_with_reason("poison").unwrap();
    advance(Duration::from_secs(3600)).await;
    assert_eq!(next_sequence(&js), None);
    assert_eq!(
        advisories.try_recv().unwrap(),
        Advisory::Terminated {
            stream: STREAM.into(),
            consumer: DURABLE.into(),
            stream_sequence: 1,
            deliveries: 1,
            reason: "poison".into(),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn max_ack_pending_holds_new_messages_but_not_redeliveries() {
    let mut config = ConsumerConfig::new(DURABLE);
    config.max_ack_pending = 1;
    let js = engine_with_consumer(config);
    publish(&js, "orders.a");
    publish(&js, "orders.b");
    let first = next_now(&js).unwrap();
    assert_eq!(next_sequence(&js), None, "one unacked: the second waits");
    first.nak(None).unwrap();
    let again = next_now(&js).unwrap();
    assert_eq!(again.info().stream_sequence, 1, "the redelivery flows");
    again.ack().unwrap();
    assert_eq!(next_sequence(&js), Some((2, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_late_ack_of_an_earlier_delivery_still_acks_the_message() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    publish(&js, "orders.a");
    let first = next_now(&js).unwrap();
    advance(Duration::from_secs(30)).await;
    let second = next_now(&js).unwrap();
    first.ack().unwrap();
    let state = info(&js);
    assert_eq!((state.num_ack_pending, state.num_redelivered), (0, 0));
    second.ack().unwrap();
    advance(Duration::from_secs(60)).await;
    assert_eq!(next_sequence(&js), None);
    assert_eq!(info(&js).ack_floor.stream_sequence, 1);
}

#[tokio::test(start_paused = true)]
async fn the_ack_floor_waits_for_the_oldest_unacked_delivery() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    for subject in ["orders.a", "orders.b", "orders.c"] {
        publish(&js, subject);
    }
    let deliveries: Vec<_> = (0..3).map(|_| next_now(&js).unwrap()).collect();
    deliveries[1].ack().unwrap();
    assert_eq!(info(&js).ack_floor, SequencePair::default());
    deliveries[0].ack().unwrap();
    let floor = info(&js).ack_floor;
    assert_eq!((floor.consumer_sequence, floor.stream_sequence), (2, 2));
    assert_eq!(info(&js).delivered.stream_sequence, 3);
}

#[tokio::test(start_paused = true)]
async fn two_consumers_each_get_every_message() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    js.create_consumer(STREAM, ConsumerConfig::new("audit"))
        .unwrap();
    publish(&js, "orders.a");
    publish(&js, "orders.b");
    for durable in [DURABLE, "audit"] {
        let first = js.next(STREAM, durable).await.unwrap();
        let second = js.next(STREAM, durable).await.unwrap();
        assert_eq!(
            (first.subject(), second.subject()),
            ("orders.a", "orders.b")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_on_one_durable_share_its_messages() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let js = js.clone();
            tokio::spawn(async move {
                js.next(STREAM, DURABLE)
                    .await
                    .unwrap()
                    .info()
                    .stream_sequence
            })
        })
        .collect();
    // Both are waiting before anything is published.
    while info(&js).num_waiting < 2 {
        tokio::task::yield_now().await;
    }
    publish(&js, "orders.a");
    publish(&js, "orders.b");
    let mut got = Vec::new();
    for waiter in waiters {
        got.push(waiter.await.unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2]);
    assert_eq!(info(&js).num_waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn next_fails_when_its_consumer_is_deleted() {
    let js = engine_with_consumer(ConsumerConfig::new(DURABLE));
    let waiter = {
        let js = js.clone();
        tokio::spawn(async move { js.next(STREAM, DURABLE).await })
    };
    while info(&js).num_waiting < 1 {
        tokio::task::yield_now().await;
    }
    js.delete_consumer(STREAM, DURABLE).unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), &MemoryErrorKind::ConsumerNotFound);
}

#[tokio::test(start_paused = true)]
async fn a_ten_step_backoff_up_to_an_hour_runs_in_virtual_time() {
    let steps: Vec<Duration> = [1, 5, 30, 60, 300, 600, 900, 1800, 2700, 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect();
    let mut config = ConsumerConfig::new(DURABLE);
    config.backoff = steps.clone();
    config.max_deliver = 11;
    let js = engine_with_consumer(config);
    publish(&js, "orders.a");
    let start = tokio::time::Instant::now();
    let mut delivered_at = Vec::new();
    for _ in 0..11 {
        // `next` sleeps until the redelivery is due; paused time jumps there.
        let delivery = js.next(STREAM, DURABLE).await.unwrap();
        delivered_at.push(start.elapsed());
        assert_eq!(delivery.info().delivered, delivered_at.len() as u64);
    }
    let mut expected = vec![Duration::ZERO];
    for step in &steps {
        expected.push(*expected.last().unwrap() + *step);
    }
    assert_eq!(delivered_at, expected);
}

/// An atomic batch is stored whole or not at all: a refused message (here
/// a stored id in the middle) undoes the ones before it, their ids too.
#[tokio::test(start_paused = true)]
async fn a_refused_batch_stores_nothing_and_forgets_its_ids() {
    let js = engine();
    let message = |id: &str| {
        (
            "orders.created".to_owned(),
            headers(&[(NATS_MESSAGE_ID.as_ref(), id)]),
            Bytes::from_static(b"{}"),
        )
    };
    js.publish_batch(vec![message("stored")]).unwrap();
    let refused = js.publish_batch(vec![message("a"), message("stored"), message("b")]);
    assert_eq!(refused, Err(BatchRefusal::Duplicate { sequence: 1 }));
    assert_eq!(js.messages(STREAM).len(), 1);
    // "a" was not kept as stored: a batch with it goes in, contiguously.
    let stored = js.publish_batch(vec![message("a"), message("b")]).unwrap();
    assert_eq!(stored, (STREAM.to_owned(), 2, 3));
}
