//! Events of a type this instance has no handler for.

use std::time::Duration;

use opentelemetry::KeyValue;

use crate::backoff::Backoff;
use crate::consume::dead_letter::DeadLetterReason;
use crate::consume::metrics::metric_attributes;
use crate::consume::UnhandledPolicy;

use super::delivery::Decision;
use super::Runtime;
use crate::semconv::UNHANDLED_ACTION;

/// How events left for others wait: delays growing with their deliveries,
/// short enough to move on soon after the instance that handles them
/// starts, long enough not to spin while none runs.
const UNHANDLED_DELAYS: Backoff =
    Backoff::exponential(Duration::from_millis(250), Duration::from_secs(5));

/// How long an event delivered for the `delivered`th time has been left for
/// others: the delays of its earlier deliveries.
fn left_for(delivered: u64) -> Duration {
    (1..delivered).map(|n| UNHANDLED_DELAYS.delay(n)).sum()
}

/// What an instance does with an event of a type it has no handler for.
pub(super) fn unhandled<S>(shared: &Runtime<S>, event_type: &str, delivered: u64) -> Decision {
    if let Some(pinned) = &shared.settings.pinned {
        pinned.unhandled.record(event_type);
    }
    let waited = left_for(delivered);
    let (decision, action) = match shared.settings.unhandled {
        UnhandledPolicy::AckAfter(after) if waited >= after => (Decision::Ack, "ack"),
        UnhandledPolicy::DeadLetterAfter(after) if waited >= after => (
            Decision::DeadLetter {
                reason: DeadLetterReason::Unhandled,
                error: format!(
                    "no handler for type {event_type}; left for other instances for {}s",
                    waited.as_secs()
                ),
                failed_runs: None,
            },
            "dead_letter",
        ),
        _ => (
            Decision::Nak {
                delay: UNHANDLED_DELAYS.delay(delivered),
                reason: "unhandled",
            },
            "leave",
        ),
    };
    let mut attributes = metric_attributes(&shared.group, event_type, None);
    attributes.push(KeyValue::new(UNHANDLED_ACTION, action));
    shared.client.metrics().unhandled.add(1, &attributes);
    tracing::Span::current().record("jetevents.unhandled", action);
    decision
}
