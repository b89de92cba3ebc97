//! The test kit as a service's own unit tests use it: the real consumer and
//! publisher on the in-memory JetStream, on tokio's paused clock.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::{Consumer, Context, DeadLetterReason, HandlerError, RetryPolicy};
use jetevents::provision::StreamSpec;
use jetevents::testing::{Retry, TestKit};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PaymentRequested {
    payment: String,
}

impl jetevents::Event for PaymentRequested {
    const TYPE: &'static str = "billing.payment.requested.v1";
    fn key(&self) -> Option<String> {
        Some(self.payment.clone())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PaymentCompleted {
    payment: String,
}

impl jetevents::Event for PaymentCompleted {
    const TYPE: &'static str = "billing.payment.completed.v1";
    fn key(&self) -> Option<String> {
        Some(self.payment.clone())
    }
}

fn payment(id: &str) -> PaymentRequested {
    PaymentRequested {
        payment: id.to_owned(),
    }
}

async fn kit_with_stream() -> TestKit {
    let kit = TestKit::new();
    let spec = StreamSpec::for_domain(kit.client().subjects(), "BILLING", "billing").unwrap();
    kit.client().ensure_stream(&spec).await.unwrap();
    kit
}

/// A payment provider that is down for good: ten attempts on a schedule
/// that grows from 30 s and is capped at one hour, then a dead letter. Three
/// hours of retries, run on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_ten_attempt_schedule_capped_at_an_hour_ends_in_a_dead_letter() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
    let wall = std::time::Instant::now();
    let kit = kit_with_stream().await;
    let runs: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = runs.clone();
    let consumer = Consumer::builder(kit.client(), "payments")
        .stream("BILLING")
        .retry(
            RetryPolicy::exponential(Duration::from_secs(30), Duration::from_secs(3600))
                .max_attempts(10)
                .jitter(0.0),
        )
        .handle(move |_: PaymentRequested, _: Context<()>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Instant::now());
                Err::<(), _>(HandlerError::transient("payment provider unavailable"))
            }
        })
        .build()
        .await
        .unwrap();
    let running = kit.run(consumer);
    let published = kit
        .client()
        .publisher()
        .publish(&PaymentRequested {
            payment: "p-1".into(),
        })
        .await
        .unwrap();

    let idle = kit.wait_idle("BILLING", "payments").await;
    if let Err(err) = &idle {
        let runs = runs.lock().unwrap().clone();
        let at: Vec<_> = runs.iter().map(|t| (*t - runs[0]).as_secs_f64()).collect();
        panic!("{err}\nruns at {at:?}");
    }
    running.stop().await.unwrap();

    let runs = runs.lock().unwrap().clone();
    let gaps: Vec<u64> = runs.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(
        gaps,
        [30, 60, 120, 240, 480, 960, 1920, 3600, 3600],
        "the delays between the ten attempts"
    );
    let dead = kit.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(dead[0].failed_runs, Some(10));
    assert_eq!(dead[0].envelope().unwrap().id, published.event_id);
    eprintln!(
        "ten attempts over {:?} of tokio time took {:?} of wall time",
        *runs.last().unwrap() - runs[0],
        wall.elapsed()
    );
}

/// Polls `found` every second of tokio's clock until it gives something,
/// for an hour at most (milliseconds of wall time under a paused clock).
async fn eventually<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        if let Some(value) = found() {
            return value;
        }
        assert!(Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An event whose instance dies while handling it, on each of its
/// `max_deliver` deliveries (the dying instance is a raw pull dropped
/// unsettled): the running consumer's next pull finds it exhausted, the
/// engine emits the max-deliveries advisory, and the same watcher as on
/// NATS dead-letters it `undeliverable`.
#[tokio::test(start_paused = true)]
async fn an_event_never_settled_within_max_deliver_is_dead_lettered_undeliverable() {
    let kit = kit_with_stream().await;
    let consumer = Consumer::builder(kit.client(), "payments")
        .stream("BILLING")
        .max_deliver(2)
        .handle(|_: PaymentRequested, _: Context<()>| async { Ok::<(), HandlerError>(()) })
        .build()
        .await
        .unwrap();
    let published = kit
        .client()
        .publisher()
        .publish(&PaymentRequested {
            payment: "p-crash".into(),
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let dying_instance = kit.jetstream().next("BILLING", "payments").await.unwrap();
        drop(dying_instance);
    }

    let running = kit.run(consumer);
    let dead = eventually("the dead letter", || kit.dead_letters().pop()).await;
    running.stop().await.unwrap();

    assert_eq!(dead.reason, DeadLetterReason::Undeliverable);
    assert_eq!(dead.delivery_count, 2);
    assert_eq!(dead.failed_runs, None);
    assert_eq!(dead.original_stream, "BILLING");
    assert_eq!(dead.consumer, "payments");
    assert_eq!(dead.envelope().unwrap().id, published.event_id);
    assert!(dead.original_header_block.is_some());
}

/// A payment service as its own unit test would check it: each payment
/// handled publishes `PaymentCompleted`; "flaky" fails once with a
/// transient error and is retried after the policy's 5 s; "bad" fails for
/// good and is dead-lettered. Everything is asserted through the report.
#[tokio::test(start_paused = true)]
async fn the_report_shows_follow_ups_a_retry_and_a_dead_letter() {
    let kit = kit_with_stream().await;
    let consumer = Consumer::builder(kit.client(), "payments")
        .stream("BILLING")
        .retry(RetryPolicy::fixed(Duration::from_secs(5)).jitter(0.0))
        .handle(|request: PaymentRequested, ctx: Context<()>| async move {
            match request.payment.as_str() {
                "flaky" if ctx.delivery_count() == 1 => {
                    return Err(HandlerError::transient("provider timed out"));
                }
                "bad" => return Err(HandlerError::permanent("card refused")),
                _ => {}
            }
            let completed = PaymentCompleted {
                payment: request.payment,
            };
            ctx.publisher()
                .publish(&completed)
                .await
                .map_err(HandlerError::transient)?;
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = kit.run(consumer);
    let publisher = kit.client().publisher();
    let ok = publisher.publish(&payment("ok")).await.unwrap().event_id;
    let flaky = publisher.publish(&payment("flaky")).await.unwrap().event_id;
    let bad = publisher.publish(&payment("bad")).await.unwrap().event_id;
    kit.wait_idle("BILLING", "payments").await.unwrap();
    running.stop().await.unwrap();

    let report = kit.report("BILLING", "payments");
    assert_eq!(
        report.handled::<PaymentRequested>(),
        [payment("ok"), payment("flaky")]
    );
    assert!(!report.was_handled(&bad));
    let once_after_5s = Retry::new(1, Some(Duration::from_secs(5)));
    assert_eq!(report.retries_of(&flaky), [once_after_5s]);
    assert!(report.retries_of(&ok).is_empty());
    assert_eq!(report.retried.len(), 1);

    let dead = report.dead_letter_of(&bad).expect("a dead letter for bad");
    assert_eq!(dead.reason, DeadLetterReason::Permanent);
    assert_eq!(dead.failed_runs, Some(1));
    assert_eq!(report.dead_letters.len(), 1);
    let terminated: Vec<&str> = report.terminated.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(terminated, [bad.as_str()]);

    let completed = |id: &str| PaymentCompleted {
        payment: id.to_owned(),
    };
    assert_eq!(
        report.follow_ups::<PaymentCompleted>(),
        [completed("ok"), completed("flaky")]
    );
    assert_eq!(report.follow_ups_of(&flaky).len(), 1);
    assert!(report.follow_ups_of(&bad).is_empty());
    assert_eq!(
        kit.published::<PaymentCompleted>(),
        report.follow_ups::<PaymentCompleted>()
    );
    // The dead letter's copy of "bad" is not a publication.
    assert_eq!(
        kit.published::<PaymentRequested>(),
        [payment("ok"), payment("flaky"), payment("bad")]
    );
}

/// Ephemeral consumers are core NATS queue subscriptions: the in-memory
/// client refuses them with a typed error instead of running without events.
#[tokio::test(start_paused = true)]
async fn an_ephemeral_consumer_on_the_in_memory_client_is_refused() {
    let kit = kit_with_stream().await;
    let built = jetevents::consume::EphemeralConsumer::builder(kit.client(), "presence")
        .handle(|_: PaymentRequested, _: Context<()>| async { Ok(()) })
        .build()
        .await;
    let Err(err) = built else {
        panic!("an ephemeral consumer needs NATS");
    };
    assert_eq!(*err.kind(), jetevents::consume::ConsumeErrorKind::Subscribe);
    assert!(err.to_string().contains("in-memory"), "{err}");
}
