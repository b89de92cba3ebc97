//! The consumer's metric attributes and its in-flight gauge.

use std::collections::HashMap;
use std::sync::Arc;

use crate::semconv::{
    CLOUDEVENTS_EVENT_TYPE, ERROR_TYPE, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM, NATS,
};
use opentelemetry::KeyValue;

/// One running handler in the in-flight gauge, taken out again when dropped
/// (also when the task is aborted). Borrows the gauge and the attributes
/// its delivery holds anyway: no reference counts to take per delivery.
pub(crate) struct InFlight<'a> {
    counter: &'a opentelemetry::metrics::UpDownCounter<i64>,
    attributes: &'a [KeyValue],
}

impl<'a> InFlight<'a> {
    pub(crate) fn start(
        counter: &'a opentelemetry::metrics::UpDownCounter<i64>,
        attributes: &'a [KeyValue],
    ) -> Self {
        counter.add(1, attributes);
        Self {
            counter,
            attributes,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.add(-1, self.attributes);
    }
}

/// Most bound on the event types whose attributes are kept: pattern
/// handlers can see any number of types.
const MAX_CACHED_TYPES: usize = 1024;

/// The metric attributes of successful deliveries, built once per event
/// type: each delivery records several metrics with the same ones.
pub(super) struct AttributeCache {
    group: String,
    cached: std::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    by_type: HashMap<String, Arc<[KeyValue]>>,
    /// The type looked up last and its attributes: a consumer sees runs of
    /// one type, and comparing the name is cheaper than hashing it. The
    /// name's buffer is reused, so alternating types allocate nothing.
    last_type: String,
    last: Option<Arc<[KeyValue]>>,
}

impl AttributeCache {
    pub(super) fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
            cached: std::sync::Mutex::new(Cached::default()),
        }
    }

    pub(super) fn of(&self, event_type: &str) -> Arc<[KeyValue]> {
        // A panic while holding the lock cannot leave the cache half-written.
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(attributes) = cached
            .last
            .as_ref()
            .filter(|_| cached.last_type == event_type)
        {
            return attributes.clone();
        }
        let attributes = match cached.by_type.get(event_type) {
            Some(attributes) => attributes.clone(),
            None => {
                let attributes: Arc<[KeyValue]> =
                    metric_attributes(&self.group, event_type, None).into();
                if cached.by_type.len() < MAX_CACHED_TYPES {
                    cached
                        .by_type
                        .insert(event_type.to_owned(), attributes.clone());
                }
                attributes
            }
        };
        cached.last_type.clear();
        cached.last_type.push_str(event_type);
        cached.last = Some(attributes.clone());
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event_type_of(attributes: &[KeyValue]) -> String {
        attributes
            .iter()
            .find(|kv| kv.key.as_str() == CLOUDEVENTS_EVENT_TYPE)
            .unwrap()
            .value
            .to_string()
    }

    /// Runs of one type, alternating types and the same type again each
    /// get their own type's attributes, shared once built.
    #[test]
    fn attributes_follow_the_type_looked_up() {
        let cache = AttributeCache::new("workers");
        for event_type in ["a.b.c.v1", "a.b.c.v1", "x.y.z.v1", "a.b.c.v1", "x.y.z.v1"] {
            assert_eq!(event_type_of(&cache.of(event_type)), event_type);
        }
        assert!(Arc::ptr_eq(&cache.of("a.b.c.v1"), &cache.of("a.b.c.v1")));
    }
}
