//! Messaging metrics through the meter the application passes in
//! `Config::meter`, read back from an in-memory exporter after a run with
//! successes, a retry and a dead letter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{Consumer, Context, DeadLetterConfig, HandlerError, RetryPolicy};
use jetevents::provision::StreamSpec;
use opentelemetry::KeyValue;

mod consume_common;
mod metrics_reader;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, Running};
use metrics_reader::{Metrics, Recorder};

const GROUP: &str = "billing";

/// A recorder, a client whose metrics it records, and a `shop` stream.
async fn metered_world() -> (Recorder, jetevents::client::Client, String) {
    let recorder = Recorder::new();
    let url = jetevents_testcontainers::shared().await.url();
    let env = support::unique("obs");
    let meter = recorder.meter();
    let client = support::connect(&url, &env, |config| config.meter = Some(meter)).await;
    let stream = support::unique("SHOP");
    let spec = StreamSpec::for_domain(client.subjects(), &stream, "shop").unwrap();
    client.ensure_stream(&spec).await.unwrap();
    (recorder, client, stream)
}

#[tokio::test]
async fn counters_and_histograms_after_successes_a_retry_and_a_dead_letter() {
    let (recorder, client, stream) = metered_world().await;
    let dead_letter_stream = support::unique("DL");

    // 1..=3 succeed, 4 fails transiently once then succeeds, 5 fails
    // permanently.
    let calls: Log<(u64, u64)> = Log::default();
    let consumer = Consumer::builder(&client, GROUP)
        .stream(&stream)
        .dead_letter(DeadLetterConfig::new(
            dead_letter_stream.clone(),
            support::unique("dl"),
        ))
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        .with_state(calls.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(u64, u64)>>| async move {
                ctx.state().push((event.n, ctx.delivery_count()));
                match (event.n, ctx.delivery_count()) {
                    (4, 1) => Err(HandlerError::transient("inventory service unavailable")),
                    (5, _) => Err(HandlerError::permanent("amount is not billable")),
                    _ => Ok(()),
                }
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    // Pipelined, so the publish window is used too.
    let orders: Vec<OrderPlaced> = (1..=5).map(order).collect();
    for result in client.publisher().publish_many(&orders, 4).await {
        result.unwrap();
    }

    eventually(
        "every delivery handled",
        Duration::from_secs(20),
        || async { calls.len() == 6 },
    )
    .await;
    // Metrics of a delivery are recorded before it is settled.
    eventually("consumer settled", Duration::from_secs(20), || async {
        let info = client
            .jetstream()
            .unwrap()
            .get_stream(&stream)
            .await
            .unwrap()
            .consumer_info(GROUP)
            .await
            .unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    running.stop().await;
    let totals = recorder.totals();
    let metrics = Metrics(&totals);

    // Publisher.
    assert_eq!(metrics.sum_u64("messaging.client.sent.messages", &[]), 5);
    assert_eq!(
        metrics.sum_u64(
            "messaging.client.sent.messages",
            &[
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("cloudevents.event_type", "shop.order.placed.v1"),
            ]
        ),
        5
    );
    assert!(!metrics.has_attribute("messaging.client.sent.messages", "error.type"));
    assert_eq!(
        metrics.histogram_count("messaging.client.operation.duration", &[]),
        5
    );
    assert_eq!(
        metrics.sum_i64_points("jetevents.publish.window.occupancy"),
        vec![0],
        "window back to empty"
    );
    assert_eq!(
        metrics.sum_u64_or_zero("jetevents.publish.retries"),
        0,
        "no publish was retried"
    );

    // Consumer.
    let group = KeyValue::new("messaging.consumer.group.name", GROUP);
    assert_eq!(
        metrics.sum_u64(
            "messaging.client.consumed.messages",
            &[group.clone(), KeyValue::new("messaging.system", "nats")]
        ),
        6,
        "five events, one of them delivered twice"
    );
    assert_eq!(
        metrics.sum_u64("jetevents.consume.retries", std::slice::from_ref(&group)),
        1
    );
    assert_eq!(
        metrics.sum_u64(
            "jetevents.consume.dead_lettered",
            &[group.clone(), KeyValue::new("error.type", "permanent")]
        ),
        1
    );
    assert_eq!(metrics.sum_u64("jetevents.consume.dead_lettered", &[]), 1);
    assert_eq!(
        metrics.histogram_count("messaging.process.duration", std::slice::from_ref(&group)),
        6
    );
    assert_eq!(
        metrics.histogram_count(
            "messaging.process.duration",
            &[KeyValue::new("error.type", "transient")]
        ),
        1
    );
    assert_eq!(
        metrics.histogram_count(
            "messaging.process.duration",
            &[KeyValue::new("error.type", "permanent")]
        ),
        1
    );
    let in_flight = metrics.sum_i64_points("jetevents.consume.in_flight");
    assert!(!in_flight.is_empty(), "handlers were counted");
    assert!(
        in_flight.iter().all(|&value| value == 0),
        "no handler left in flight: {in_flight:?}"
    );
}

/// An ack the client cannot send (its connection closed while the handler
/// ran) is not swallowed: it is counted with `operation=ack`.
#[tokio::test]
async fn an_ack_that_cannot_be_sent_is_counted_as_a_settle_failure() {
    let (recorder, client, stream) = metered_world().await;

    let started: Log<u64> = Log::default();
    let (release, released) = tokio::sync::watch::channel(false);
    let consumer =
        Consumer::builder(&client, "settling")
            .stream(&stream)
            .dead_letter(DeadLetterConfig::new(
                support::unique("DL"),
                support::unique("dl"),
            ))
            .with_state((started.clone(), released))
            .handle(
                |event: OrderPlaced,
                 ctx: Context<(Log<u64>, tokio::sync::watch::Receiver<bool>)>| async move {
                    let (started, released) = ctx.state();
                    started.push(event.n);
                    let mut released = released.clone();
                    released.wait_for(|open| *open).await.ok();
                    Ok::<_, HandlerError>(())
                },
            )
            .build()
            .await
            .unwrap();
    // Not `Running`: the runner ends with an error once its client is gone.
    let runner = tokio::spawn(consumer.run_until(std::future::pending()));
    client.publisher().publish(&order(1)).await.unwrap();
    eventually("handler started", Duration::from_secs(20), || async {
        started.len() == 1
    })
    .await;

    client.clone().close().await;
    eventually("client closed", Duration::from_secs(20), || async {
        client
            .nats()
            .unwrap()
            .publish("closed.probe", "".into())
            .await
            .is_err()
    })
    .await;
    release.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("runner did not end")
        .unwrap();
    assert!(ended.is_err(), "the runner cannot go on without its client");

    let totals = recorder.totals();
    let metrics = Metrics(&totals);
    assert_eq!(
        metrics.sum_u64(
            "jetevents.consume.settle_failures",
            &[
                KeyValue::new("messaging.consumer.group.name", "settling"),
                KeyValue::new("operation", "ack"),
            ]
        ),
        1
    );
}
