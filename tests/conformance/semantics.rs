//! Level 2: the consumer semantics of JetStream itself, on raw deliveries
//! (see [`Engine`]). Times are lower bounds measured from before the pull
//! that started the clock, so a slow machine cannot fail them.

use std::time::Duration;

use tokio::time::Instant;

use super::engine::{Engine, Settings};

/// The ack wait of the cases that wait for it.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// An ack wait no case waits for.
const LONG_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a case waits for a delivery it expects.
const EXPECTED: Duration = Duration::from_secs(10);
/// How long a case waits to see that nothing is delivered.
const QUIET: Duration = Duration::from_millis(500);

fn ack_wait(ack_wait: Duration) -> Settings {
    Settings {
        ack_wait,
        ..Settings::default()
    }
}

/// A delivery not acked within the ack wait is delivered again.
pub async fn ack_wait_redelivers<E: Engine>(mut engine: E) {
    engine.create_consumer(ack_wait(ACK_WAIT)).await;
    let sequence = engine.publish("a").await;
    let pulled = Instant::now();
    let first = engine.next(EXPECTED).await.unwrap();
    assert_eq!((first.stream_sequence, first.delivered), (sequence, 1));
    let again = engine.next(EXPECTED).await.expect("redelivered");
    assert!(pulled.elapsed() >= ACK_WAIT, "after {:?}", pulled.elapsed());
    assert_eq!((again.stream_sequence, again.delivered), (sequence, 2));
    engine.ack(&again.message).await;
    let info = engine.consumer_info().await;
    assert_eq!(
        (info.num_ack_pending, info.ack_floor_stream_sequence),
        (0, sequence)
    );
}

/// In-progress acks start the ack wait again: a delivery worked on longer
/// than its ack wait is not redelivered while they come, and is after.
pub async fn in_progress_extends<E: Engine>(mut engine: E) {
    engine.create_consumer(ack_wait(ACK_WAIT)).await;
    engine.publish("a").await;
    let first = engine.next(EXPECTED).await.unwrap();
    for _ in 0..6 {
        // Holding the delivery is the point: three tenths of the ack wait.
        tokio::time::sleep(ACK_WAIT * 3 / 10).await;
        engine.in_progress(&first.message).await;
    }
    let last_progress = Instant::now();
    assert!(
        engine.next(QUIET).await.is_none(),
        "redelivered while in progress"
    );
    let again = engine
        .next(EXPECTED)
        .await
        .expect("redelivered after progress stopped");
    assert!(last_progress.elapsed() >= ACK_WAIT);
    assert_eq!(again.delivered, 2);
    engine.ack(&again.message).await;
}

/// With a backoff, the n-th redelivery waits the n-th step, not the ack wait.
pub async fn backoff_schedule<E: Engine>(mut engine: E) {
    let steps = [Duration::from_millis(500), Duration::from_millis(1500)];
    engine
        .create_consumer(Settings {
            backoff: steps.to_vec(),
            ..Settings::default()
        })
        .await;
    engine.publish("a").await;
    let pulled = Instant::now();
    let mut counts = Vec::new();
    let mut since_first = Vec::new();
    for _ in 0..3 {
        let got = engine.next(EXPECTED).await.unwrap();
        counts.push(got.delivered);
        since_first.push(pulled.elapsed());
    }
    assert_eq!(counts, [1, 2, 3]);
    assert!(since_first[1] >= steps[0], "{since_first:?}");
    assert!(since_first[2] >= steps[0] + steps[1], "{since_first:?}");
}

/// After `max_deliver` deliveries a message is not delivered again. The
/// server notices when the message is next in line for redelivery and a
/// pull is waiting: until then it stays pending. Unacked, it leaves the
/// ack floor behind.
pub async fn max_deliver_stops_redelivery<E: Engine>(mut engine: E) {
    engine
        .create_consumer(Settings {
            max_deliver: 2,
            ..ack_wait(ACK_WAIT)
        })
        .await;
    engine.publish("a").await;
    let first = engine.next(EXPECTED).await.unwrap();
    let second = engine.next(EXPECTED).await.unwrap();
    assert_eq!((first.delivered, second.delivered), (1, 2));
    // Nobody pulls while the second ack wait runs out.
    tokio::time::sleep(ACK_WAIT * 2).await;
    let unnoticed = engine.consumer_info().await;
    assert_eq!(
        (
            unnoticed.num_ack_pending,
            unnoticed.ack_floor_stream_sequence
        ),
        (1, 0)
    );
    assert!(engine.next(QUIET).await.is_none(), "delivered a third time");
    let info = engine.consumer_info().await;
    assert_eq!(
        (info.num_ack_pending, info.ack_floor_stream_sequence),
        (0, 0)
    );
}

/// With `max_deliver` 1 the message leaves pending when its ack wait runs
/// out, even with nobody pulling; unacked, it leaves the ack floor behind.
pub async fn max_deliver_of_one_ends_at_the_ack_wait<E: Engine>(mut engine: E) {
    engine
        .create_consumer(Settings {
            max_deliver: 1,
            ..ack_wait(ACK_WAIT)
        })
        .await;
    engine.publish("a").await;
    engine.next(EXPECTED).await.unwrap();
    // Nobody pulls while the ack wait runs out.
    tokio::time::sleep(ACK_WAIT * 2).await;
    let info = engine.consumer_info().await;
    assert_eq!(
        (info.num_ack_pending, info.ack_floor_stream_sequence),
        (0, 0)
    );
    assert!(
        engine.next(QUIET).await.is_none(),
        "delivered a second time"
    );
}

/// A Nak's delay is counted against the current backoff step: after the
/// n-th delivery it waits `delay + backoff[n-1] - backoff[0]`.
pub async fn nak_delay_counts_against_backoff<E: Engine>(mut engine: E) {
    let steps = [Duration::from_millis(300), Duration::from_millis(1300)];
    engine
        .create_consumer(Settings {
            backoff: steps.to_vec(),
            ..Settings::default()
        })
        .await;
    engine.publish("a").await;
    let delay = Duration::from_millis(500);
    let pulled = Instant::now();
    let first = engine.next(EXPECTED).await.unwrap();
    engine.nak(&first.message, Some(delay)).await;
    let second = engine.next(EXPECTED).await.unwrap();
    let second_after = pulled.elapsed();
    engine.nak(&second.message, Some(delay)).await;
    let third = engine.next(EXPECTED).await.unwrap();
    let third_after = pulled.elapsed();
    assert_eq!((second.delivered, third.delivered), (2, 3));
    assert!(second_after >= delay, "{second_after:?}");
    let step_two = delay + steps[1] - steps[0];
    assert!(third_after >= delay + step_two, "{third_after:?}");
}

/// At `max_ack_pending` unacked deliveries, new messages wait for an ack.
pub async fn max_ack_pending_holds_new_messages<E: Engine>(mut engine: E) {
    engine
        .create_consumer(Settings {
            max_ack_pending: 1,
            ..ack_wait(LONG_ACK_WAIT)
        })
        .await;
    let a = engine.publish("a").await;
    let b = engine.publish("b").await;
    let first = engine.next(EXPECTED).await.unwrap();
    assert_eq!(first.stream_sequence, a);
    assert!(
        engine.next(QUIET).await.is_none(),
        "delivered past max ack pending"
    );
    engine.ack(&first.message).await;
    let second = engine.next(EXPECTED).await.unwrap();
    assert_eq!(second.stream_sequence, b);
}

/// A message Naked for redelivery now comes before messages not delivered yet.
pub async fn redeliveries_before_new_messages<E: Engine>(mut engine: E) {
    engine.create_consumer(ack_wait(LONG_ACK_WAIT)).await;
    let a = engine.publish("a").await;
    let b = engine.publish("b").await;
    let first = engine.next(EXPECTED).await.unwrap();
    engine.nak(&first.message, None).await;
    let next = engine.next(EXPECTED).await.unwrap();
    assert_eq!((next.stream_sequence, next.delivered), (a, 2));
    let then = engine.next(EXPECTED).await.unwrap();
    assert_eq!((then.stream_sequence, then.delivered), (b, 1));
}

/// A terminated message is never delivered again and counts as acked.
pub async fn term_ends_delivery<E: Engine>(mut engine: E) {
    engine.create_consumer(ack_wait(ACK_WAIT)).await;
    let a = engine.publish("a").await;
    let first = engine.next(EXPECTED).await.unwrap();
    engine.term(&first.message).await;
    assert!(
        engine.next(ACK_WAIT * 2).await.is_none(),
        "delivered after term"
    );
    let info = engine.consumer_info().await;
    assert_eq!(
        (info.num_ack_pending, info.ack_floor_stream_sequence),
        (0, a)
    );
}
