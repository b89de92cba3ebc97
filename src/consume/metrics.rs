//! The consumer's metric attributes and its in-flight gauge.

use std::collections::HashMap;
use std::sync::Arc;

use crate::semconv::{
    CLOUDEVENTS_EVENT_TYPE, ERROR_TYPE, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM, NATS,
};
use opentelemetry::KeyValue;

/// One running handler in the in-flight gauge, taken out again when dropped
/// (also when the task is aborted).
pub(super) struct InFlight {
    counter: opentelemetry::metrics::UpDownCounter<i64>,
    attributes: Arc<[KeyValue]>,
}

impl InFlight {
    pub(super) fn start(
        counter: opentelemetry::metrics::UpDownCounter<i64>,
        attributes: Arc<[KeyValue]>,
    ) -> Self {
        counter.add(1, &attributes);
        Self {
            counter,
            attributes,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.add(-1, &self.attributes);
    }
}

/// Most bound on the event types whose attributes are kept: pattern
/// handlers can see any number of types.
const MAX_CACHED_TYPES: usize = 1024;

/// The metric attributes of successful deliveries, built once per event
/// type: each delivery records several metrics with the same ones.
pub(super) struct AttributeCache {
    group: String,
    by_type: std::sync::Mutex<HashMap<String, Arc<[KeyValue]>>>,
}

impl AttributeCache {
    pub(super) fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
            by_type: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn of(&self, event_type: &str) -> Arc<[KeyValue]> {
        // A panic while holding the lock cannot leave the map half-written.
        let mut by_type = self
            .by_type
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(attributes) = by_type.get(event_type) {
            return attributes.clone();
        }
        let attributes: Arc<[KeyValue]> = metric_attributes(&self.group, event_type, None).into();
        if by_type.len() < MAX_CACHED_TYPES {
            by_type.insert(event_type.to_owned(), attributes.clone());
        }
        attributes
    }
}

/// Low-cardinality metric attributes of one delivery: never the subject
/// (it carries keys) or the event id.
pub(crate) fn metric_attributes(
    group: &str,
    event_type: &str,
    error: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new(MESSAGING_SYSTEM, NATS),
        KeyValue::new(MESSAGING_OPERATION_NAME, "process"),
        KeyValue::new(MESSAGING_CONSUMER_GROUP_NAME, group.to_owned()),
        KeyValue::new(CLOUDEVENTS_EVENT_TYPE, event_type.to_owned()),
    ];
    if let Some(error) = error {
        attributes.push(KeyValue::new(ERROR_TYPE, error.to_owned()));
    }
    attributes
}
