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

/// The metric records of one event and nothing else: what the compare
/// benchmark's observability floor measures. Mirrors what `publish_many`
/// and the consumer's runner record per event (same instruments, same
/// attributes); keep it in step with `publish/pipeline.rs`,
/// `publish/attempt.rs` and `consume/runner/delivery.rs`.
#[doc(hidden)]
pub struct PerEventRecords {
    metrics: Metrics,
    event_type: &'static str,
    /// Events of the current burst (`publish`).
    in_burst: std::cell::Cell<u64>,
    process_attributes: std::sync::Arc<[KeyValue]>,
}

impl PerEventRecords {
    /// The records of events of `event_type`, consumed by `group`.
    pub fn new(meter: &Meter, event_type: &'static str, group: &str) -> Self {
        Self {
            metrics: Metrics::new(meter),
            event_type,
            in_burst: std::cell::Cell::new(0),
            process_attributes: crate::consume::metrics::metric_attributes(group, event_type, None)
                .into(),
        }
    }

    /// What a successful event of `publish_many` records: its duration;
    /// the counters are added once per burst of `burst` events.
    pub fn publish(&self, seconds: f64, burst: u64) {
        let metrics = &self.metrics;
        let attributes = publish_attributes(self.event_type, None);
        metrics
            .operation_duration
            .record(seconds, attributes.as_slice());
        self.in_burst.set(self.in_burst.get() + 1);
        if self.in_burst.get() == burst {
            self.in_burst.set(0);
            metrics.publish_window.add(0, &[]);
            metrics.sent.add(burst, attributes.as_slice());
        }
    }

    /// What a successfully handled delivery records.
    pub fn process(&self, seconds: f64) {
        let metrics = &self.metrics;
        metrics.consumed.add(1, &self.process_attributes);
        metrics.handlers_in_flight.add(1, &self.process_attributes);
        metrics.handlers_in_flight.add(-1, &self.process_attributes);
        metrics
            .process_duration
            .record(seconds, &self.process_attributes);
    }
}
