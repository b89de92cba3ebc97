//! The test kit as a service's own unit tests use it: the real consumer and
//! publisher on the in-memory JetStream, on tokio's paused clock.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::{Consumer, Context, DeadLetterReason, HandlerError, RetryPolicy};
use jetevents::provision::StreamSpec;
use jetevents::testing::TestKit;
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

async fn kit_with_stream() -> TestKit {
    let kit = TestKit::new();
    let spec = StreamSpec::for_domain(kit.client().subjects(), "BILLING", "billing").unwrap();
    kit.client().ensure_stream(&spec).await.unwrap();
    kit
}

/// A payment provider that is down for good: ten attempts on a schedule
/// that grows from 30 s and is capped at one hour, then a dead letter. Six
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
