//! The gateway's instruments through the `opentelemetry` metrics API, in the
//! core's style (see `jetevents::metrics`): the meter comes from the
//! application (or the global provider); the gateway never installs one.
//! Attributes stay low-cardinality: a transport, a reason, an outcome.

use opentelemetry::metrics::{Counter, Meter, UpDownCounter};
use opentelemetry::KeyValue;

/// Name of the instrumentation scope.
pub const SCOPE: &str = "jetevents-gateway";

/// The instruments of one gateway.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    pub(crate) connections: UpDownCounter<i64>,
    pub(crate) sent: Counter<u64>,
    pub(crate) dropped: Counter<u64>,
    pub(crate) resumes: Counter<u64>,
    pub(crate) auth_failures: Counter<u64>,
    pub(crate) refused: Counter<u64>,
}

impl GatewayMetrics {
    /// Creates the instruments on `meter`.
    ///
    /// ```
    /// let meter = opentelemetry::global::meter("jetevents-gateway");
    /// let _metrics = jetevents_gateway::GatewayMetrics::new(&meter);
    /// ```
    pub fn new(meter: &Meter) -> Self {
        Self {
            connections: meter
                .i64_up_down_counter("jetevents.gateway.connections")
                .with_description("Open client streams (attribute transport: sse, websocket)")
                .with_unit("{connection}")
                .build(),
            sent: meter
                .u64_counter("messaging.client.sent.messages")
                .with_description("Events written to clients")
                .with_unit("{message}")
                .build(),
            dropped: meter
                .u64_counter("jetevents.gateway.disconnected")
                .with_description(
                    "Streams the gateway ended, by reason (slow-consumer, token-expired, \
                     shutdown, stream-unavailable)",
                )
                .with_unit("{connection}")
                .build(),
            resumes: meter
                .u64_counter("jetevents.gateway.resumes")
                .with_description("Resume requests, by outcome (resumed, reset)")
                .with_unit("{request}")
                .build(),
            auth_failures: meter
                .u64_counter("jetevents.gateway.auth_failures")
                .with_description("Requests refused with 401 or 403, by reason")
                .with_unit("{request}")
                .build(),
            refused: meter
                .u64_counter("jetevents.gateway.limited")
                .with_description("Connections refused by a limit (total, per-token)")
                .with_unit("{request}")
                .build(),
        }
    }

    /// The metrics of the global meter provider.
    pub fn global() -> Self {
        Self::new(&opentelemetry::global::meter(SCOPE))
    }
}

pub(crate) fn reason(value: &'static str) -> [KeyValue; 1] {
    [KeyValue::new("reason", value)]
}
