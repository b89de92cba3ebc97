//! Messaging metrics through the meter the application passes in
//! `Config::meter`, read back from an in-memory exporter after a run with
//! successes, a retry and a dead letter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{Consumer, Context, DeadLetterConfig, HandlerError, RetryPolicy};
use jetevents::provision::StreamSpec;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, Running};

const GROUP: &str = "billing";

#[tokio::test]
async fn counters_and_histograms_after_successes_a_retry_and_a_dead_letter() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();

    let url = jetevents_testcontainers::shared().await.url();
    let env = support::unique("obs");
    let meter = provider.meter("jetevents");
    let client = support::connect(&url, &env, |config| config.meter = Some(meter)).await;
    let stream = support::unique("SHOP");
    let spec = StreamSpec::for_domain(client.subjects(), &stream, "shop").unwrap();
    client.ensure_stream(&spec).await.unwrap();
    let dead_letter_stream = support::unique("DL");

    // 1..=3 succeed, 4 fails transiently once then succeeds, 5 fails
    // permanently.
    let calls: Log<(u64, u64)> = Log::default();
    let consumer = Consumer::builder(&client, GROUP)
        .stream(&stream)
        .dead_letter(DeadLetterConfig {
            stream: dead_letter_stream.clone(),
            subject_prefix: support::unique("dl"),
        })
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
    provider.force_flush().unwrap();

    let exported = exporter.get_finished_metrics().unwrap();
    // Cumulative temporality: the last export holds the totals.
    let totals = exported.last().expect("an export");
    let metrics = Metrics(totals);

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

/// Reading one export.
struct Metrics<'a>(&'a ResourceMetrics);

impl Metrics<'_> {
    fn find(&self, name: &str) -> Option<&Metric> {
        let found: Vec<&Metric> = self
            .0
            .scope_metrics()
            .filter(|scope| scope.scope().name() == "jetevents")
            .flat_map(|scope| scope.metrics())
            .filter(|metric| metric.name() == name)
            .collect();
        assert!(found.len() <= 1, "{name} exported {} times", found.len());
        found.into_iter().next()
    }

    fn get(&self, name: &str) -> &Metric {
        self.find(name).unwrap_or_else(|| {
            let names: Vec<String> = self
                .0
                .scope_metrics()
                .flat_map(|scope| scope.metrics())
                .map(|metric| metric.name().to_owned())
                .collect();
            panic!("{name} not exported; got {names:?}")
        })
    }

    /// Sum of a `u64` counter over the data points having all of `with`.
    fn sum_u64(&self, name: &str, with: &[KeyValue]) -> u64 {
        match self.get(name).data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .filter(|point| has_all(point.attributes(), with))
                .map(|point| point.value())
                .sum(),
            other => panic!("{name}: not a u64 sum: {other:?}"),
        }
    }

    /// Like `sum_u64`, for an instrument that may never have been used.
    fn sum_u64_or_zero(&self, name: &str) -> u64 {
        self.find(name).map_or(0, |_| self.sum_u64(name, &[]))
    }

    /// Values of an `i64` up-down counter, one per attribute set.
    fn sum_i64_points(&self, name: &str) -> Vec<i64> {
        match self.get(name).data() {
            AggregatedMetrics::I64(MetricData::Sum(sum)) => {
                sum.data_points().map(|point| point.value()).collect()
            }
            other => panic!("{name}: not an i64 sum: {other:?}"),
        }
    }

    /// Recorded values of an `f64` histogram over the data points having all
    /// of `with`.
    fn histogram_count(&self, name: &str, with: &[KeyValue]) -> u64 {
        match self.get(name).data() {
            AggregatedMetrics::F64(MetricData::Histogram(histogram)) => histogram
                .data_points()
                .filter(|point| has_all(point.attributes(), with))
                .map(|point| {
                    assert_eq!(
                        point.bucket_counts().sum::<u64>(),
                        point.count(),
                        "{name}: buckets add up"
                    );
                    point.count()
                })
                .sum(),
            other => panic!("{name}: not an f64 histogram: {other:?}"),
        }
    }

    fn has_attribute(&self, name: &str, key: &str) -> bool {
        match self.get(name).data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => sum
                .data_points()
                .any(|point| point.attributes().any(|kv| kv.key.as_str() == key)),
            other => panic!("{name}: not a u64 sum: {other:?}"),
        }
    }
}

fn has_all<'a>(attributes: impl Iterator<Item = &'a KeyValue>, with: &[KeyValue]) -> bool {
    let attributes: Vec<&KeyValue> = attributes.collect();
    with.iter().all(|wanted| attributes.contains(&wanted))
}
