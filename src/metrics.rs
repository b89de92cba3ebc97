//! Messaging metrics through the `opentelemetry` metrics API.
//!
//! Instruments use the OpenTelemetry messaging semantic-convention names where
//! they exist (`messaging.client.sent.messages`,
//! `messaging.client.consumed.messages`, `messaging.process.duration`,
//! `messaging.client.operation.duration`) and `jetevents.*` names for the rest.
//! The meter comes from [`Config::meter`](crate::config::Config::meter) or, when
//! that is unset, from the global meter provider the application installed
//! before connecting. The library never installs a provider.
//!
//! Attributes stay low-cardinality on purpose: the event type and the consumer
//! group, never a subject (subjects carry keys) or an event id.

use crate::semconv::{
    CLOUDEVENTS_EVENT_TYPE, ERROR_TYPE, MESSAGING_OPERATION_NAME, MESSAGING_SYSTEM, NATS,
};
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::{KeyValue, StringValue};

/// Name of the instrumentation scope.
pub const SCOPE: &str = "jetevents";

/// Buckets for durations in seconds: 100 µs to 10 s.
const DURATION_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The instruments of one client, shared by its publishers and consumers.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub(crate) sent: Counter<u64>,
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) publish_retries: Counter<u64>,
    pub(crate) publish_window: UpDownCounter<i64>,
    pub(crate) consumed: Counter<u64>,
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) consume_retries: Counter<u64>,
    pub(crate) dead_lettered: Counter<u64>,
    pub(crate) unhandled: Counter<u64>,
    pub(crate) filter_drift: Counter<u64>,
    pub(crate) handlers_in_flight: UpDownCounter<i64>,
    pub(crate) settle_failures: Counter<u64>,
    pub(crate) breaker_state: Gauge<i64>,
    pub(crate) breaker_transitions: Counter<u64>,
    pub(crate) projection_lag: Gauge<u64>,
    pub(crate) partitions_owned: Gauge<u64>,
    pub(crate) partition_rebalances: Counter<u64>,
}

impl Metrics {
    /// Creates the instruments on `meter`.
    ///
    /// ```
    /// let meter = opentelemetry::global::meter("jetevents");
    /// let _metrics = jetevents::metrics::Metrics::new(&meter);
    /// ```
    pub fn new(meter: &Meter) -> Self {
        Self {
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_description(
                    "Events the server acknowledged as stored (or failed to, with error.type)",
                )
                .with_unit("{message}")
                .build(),
            operation_duration: meter
                .f64_histogram("messaging.client.operation.duration")
                .with_description(
                    "Duration of a publish, from sending to the server's ack, retries included",
                )
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            publish_retries: meter
                .u64_counter("jetevents.publish.retries")
                .with_description(
                    "Publish attempts repeated after an ack timeout or a missing stream leader",
                )
                .with_unit("{attempt}")
                .build(),
            publish_window: meter
                .i64_up_down_counter("jetevents.publish.window.occupancy")
                .with_description("Acks awaited at once by pipelined publishing")
                .with_unit("{message}")
                .build(),
            consumed: meter
                .u64_counter("messaging.client.consumed.messages")
                .with_description("Events delivered to a consumer")
                .with_unit("{message}")
                .build(),
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_description("Duration of handling one event")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            consume_retries: meter
                .u64_counter("jetevents.consume.retries")
                .with_description("Events Nak'ed for redelivery after a transient failure")
                .with_unit("{message}")
                .build(),
            dead_lettered: meter
                .u64_counter("jetevents.consume.dead_lettered")
                .with_description("Events copied to the dead-letter stream and terminated")
                .with_unit("{message}")
                .build(),
            unhandled: meter
                .u64_counter("jetevents.consume.unhandled")
                .with_description(
                    "Deliveries of types this instance has no handler for, by what was done \
                     (jetevents.unhandled.action: leave, ack, dead_letter)",
                )
                .with_unit("{message}")
                .build(),
            filter_drift: meter
                .u64_counter("jetevents.consume.filter_drift")
                .with_description(
                    "Times an instance found subjects in its group's filter that it does not handle",
                )
                .with_unit("{event}")
                .build(),
            handlers_in_flight: meter
                .i64_up_down_counter("jetevents.consume.in_flight")
                .with_description("Handlers running now")
                .with_unit("{message}")
                .build(),
            settle_failures: meter
                .u64_counter("jetevents.consume.settle_failures")
                .with_description(
                    "Acks, Naks, Terms, in-progress acks and dead-letter copies that failed \
                     (attribute operation)",
                )
                .with_unit("{operation}")
                .build(),
            breaker_state: meter
                .i64_gauge("jetevents.consume.breaker.state")
                .with_description(
                    "State of a circuit breaker: 0 closed, 1 open, 2 half-open \
                     (attribute jetevents.breaker.name)",
                )
                .with_unit("{state}")
                .build(),
            breaker_transitions: meter
                .u64_counter("jetevents.consume.breaker.transitions")
                .with_description(
                    "Circuit breaker transitions, by the state entered (jetevents.breaker.state)",
                )
                .with_unit("{transition}")
                .build(),
            projection_lag: meter
                .u64_gauge("jetevents.projection.lag")
                .with_description(
                    "Stream sequences a projection's read model is behind its aggregate type's \
                     last event (attribute jetevents.projection.name)",
                )
                .with_unit("{message}")
                .build(),
            partitions_owned: meter
                .u64_gauge("jetevents.consume.partitions.owned")
                .with_description(
                    "Partitions a member of a partitioned group consumes \
                     (attribute jetevents.partitioned.member)",
                )
                .with_unit("{partition}")
                .build(),
            partition_rebalances: meter
                .u64_counter("jetevents.consume.partitions.rebalances")
                .with_description(
                    "Times a member of a partitioned group took or gave away partitions",
                )
                .with_unit("{rebalance}")
                .build(),
        }
    }

    /// The metrics of the global meter provider (a no-op one unless the
    /// application installed another).
    pub fn global() -> Self {
        Self::new(&opentelemetry::global::meter(SCOPE))
    }

    // What the library records per event, defined once here: the publisher
    // and the consumer's runner call these, and so does [`PerEventRecords`]
    // (the compare benchmark's floor), so the two cannot drift apart.

    /// Every settled publish: its duration, retries included.
    pub(crate) fn record_publish_duration(&self, seconds: f64, attributes: &PublishAttributes) {
        self.operation_duration
            .record(seconds, attributes.as_slice());
    }

    /// Every delivery, as it arrives.
    pub(crate) fn record_consumed(&self, attributes: &[KeyValue]) {
        self.consumed.add(1, attributes);
    }

    /// Every delivery handled without error: how long its handler took.
    pub(crate) fn record_processed(&self, seconds: f64, attributes: &[KeyValue]) {
        self.process_duration.record(seconds, attributes);
    }
}

/// The attributes of a publish measurement, on the stack: every publish
/// records them, so they must not allocate (a typed event's type is static).
pub(crate) struct PublishAttributes {
    attributes: [KeyValue; 4],
    len: usize,
}

impl PublishAttributes {
    pub(crate) fn as_slice(&self) -> &[KeyValue] {
        &self.attributes[..self.len]
    }
}

/// Attributes common to every jetevents publish measurement.
pub(crate) fn publish_attributes(
    event_type: impl Into<StringValue>,
    error: Option<&'static str>,
) -> PublishAttributes {
    PublishAttributes {
        attributes: [
            KeyValue::new(MESSAGING_SYSTEM, NATS),
            KeyValue::new(MESSAGING_OPERATION_NAME, "publish"),
            KeyValue::new(CLOUDEVENTS_EVENT_TYPE, event_type.into()),
            KeyValue::new(ERROR_TYPE, error.unwrap_or_default()),
        ],
        len: if error.is_some() { 4 } else { 3 },
    }
}

/// Counter updates of `publish_many` held back to be added once per burst
/// rather than once per event: each `add` hashes its attributes and looks
/// its series up. Sums are unchanged; the window gauge moves by bursts.
/// Added when dropped too, so a cancelled `publish_many` loses no count.
pub(crate) struct HeldBackCounts {
    metrics: Metrics,
    /// Events sent, awaiting their ack, minus those settled.
    window: i64,
    /// Events stored, all with the same `sent` attributes.
    stored: u64,
    /// Their `sent` attributes (the event type is the same for a whole
    /// `publish_many`).
    stored_attributes: Option<PublishAttributes>,
}

impl HeldBackCounts {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            window: 0,
            stored: 0,
            stored_attributes: None,
        }
    }

    /// An event was sent: one more ack awaited.
    pub(crate) fn sent(&mut self) {
        self.window += 1;
    }

    /// An event's ack was awaited (stored, failed or to be retried).
    pub(crate) fn settled(&mut self) {
        self.window -= 1;
    }

    /// An event was stored; `attributes` are its `sent` attributes.
    pub(crate) fn stored(&mut self, attributes: PublishAttributes) {
        self.stored += 1;
        self.stored_attributes.get_or_insert(attributes);
    }

    /// Adds the held-back counts to their counters.
    pub(crate) fn add(&mut self) {
        if self.window != 0 {
            self.metrics.publish_window.add(self.window, &[]);
            self.window = 0;
        }
        if let (stored @ 1.., Some(attributes)) = (self.stored, &self.stored_attributes) {
            self.metrics.sent.add(stored, attributes.as_slice());
            self.stored = 0;
        }
    }
}

impl Drop for HeldBackCounts {
    fn drop(&mut self) {
        self.add();
    }
}

/// The metric records of one event and nothing else: what the compare
/// benchmark's observability floor measures. Built from the same pieces
/// the library records with ([`Metrics`]' `record_*` methods, the held-back
/// counts of `publish_many`, the consumer's in-flight gauge and metric
/// attributes), in the order `publish_many` and the consumer's runner call
/// them for a successful event.
#[doc(hidden)]
pub struct PerEventRecords {
    metrics: Metrics,
    event_type: &'static str,
    /// Events of the current burst (`publish`).
    in_burst: std::cell::Cell<u64>,
    counts: std::cell::RefCell<HeldBackCounts>,
    process_attributes: std::sync::Arc<[KeyValue]>,
}

impl PerEventRecords {
    /// The records of events of `event_type`, consumed by `group`.
    pub fn new(meter: &Meter, event_type: &'static str, group: &str) -> Self {
        let metrics = Metrics::new(meter);
        Self {
            counts: std::cell::RefCell::new(HeldBackCounts::new(metrics.clone())),
            metrics,
            event_type,
            in_burst: std::cell::Cell::new(0),
            process_attributes: crate::consume::metrics::metric_attributes(group, event_type, None)
                .into(),
        }
    }

    /// What a successful event of `publish_many` records, sent in bursts
    /// of `burst` events: its duration, and its share of the counts added
    /// once per burst.
    pub fn publish(&self, seconds: f64, burst: u64) {
        let mut counts = self.counts.borrow_mut();
        if self.in_burst.get() == 0 {
            // The burst is sent, then its counts so far are added.
            for _ in 0..burst {
                counts.sent();
            }
            counts.add();
        }
        self.in_burst.set((self.in_burst.get() + 1) % burst.max(1));
        let attributes = publish_attributes(self.event_type, None);
        self.metrics.record_publish_duration(seconds, &attributes);
        counts.settled();
        counts.stored(attributes);
    }

    /// What a successfully handled delivery records.
    pub fn process(&self, seconds: f64) {
        let attributes = &self.process_attributes;
        self.metrics.record_consumed(attributes);
        let in_flight =
            crate::consume::metrics::InFlight::start(&self.metrics.handlers_in_flight, attributes);
        drop(in_flight);
        self.metrics.record_processed(seconds, attributes);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::{publish_attributes, HeldBackCounts, Metrics, SCOPE};
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    /// A `publish_many` dropped with counts held back (cancelled between
    /// bursts) still adds them.
    #[test]
    fn held_back_counts_are_added_when_dropped() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let mut counts = HeldBackCounts::new(Metrics::new(&provider.meter(SCOPE)));
        for _ in 0..3 {
            counts.stored(publish_attributes("shop.order.placed.v1", None));
        }
        drop(counts);
        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let sent: u64 = exported
            .iter()
            .flat_map(|resource| resource.scope_metrics())
            .flat_map(|scope| scope.metrics())
            .filter(|metric| metric.name() == "messaging.client.sent.messages")
            .map(|metric| match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    sum.data_points().map(|point| point.value()).sum::<u64>()
                }
                other => panic!("not a u64 sum: {other:?}"),
            })
            .sum();
        assert_eq!(sent, 3);
    }
}
