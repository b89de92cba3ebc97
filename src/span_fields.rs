//! The per-event messaging spans (publish, process) and their field values
//! that need formatting, as `Display` wrappers: a layer formats them only
//! when it records the field, and they write straight into its buffer (no
//! intermediate `String`).
//!
//! Public but hidden: the compare benchmark's observability floor creates
//! the very spans the library creates.

use std::fmt;

/// The identity of a published event, as its publish span shows it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct PublishedEvent<'a> {
    /// Where it is sent.
    pub subject: &'a str,
    /// Its CloudEvents id.
    pub id: &'a str,
    /// Its CloudEvents type.
    pub event_type: &'a str,
    /// Its CloudEvents source.
    pub source: &'a str,
    /// Its correlation id, when it has one.
    pub correlation_id: Option<&'a str>,
}

/// The publish span of one event, its fields the OpenTelemetry messaging
/// conventions' (those known later are recorded then).
#[doc(hidden)]
pub fn publish_span(event: PublishedEvent<'_>) -> tracing::Span {
    // The target is the publisher's module, where the span was made before
    // it moved here: filters written for it keep working.
    tracing::info_span!(
        target: "jetevents::publish::prepare",
        "publish",
        otel.name = %OperationName { operation: "publish", subject: event.subject },
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = event.subject,
        messaging.destination.template = %DestinationTemplate(event.subject),
        messaging.message.id = event.id,
        messaging.message.conversation_id = event.correlation_id,
        cloudevents.event_id = event.id,
        cloudevents.event_type = event.event_type,
        cloudevents.event_source = event.source,
        cloudevents.event_spec_version = "1.0",
        messaging.nats.stream.sequence = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Where a delivery came from, as its process span shows it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Delivered<'a> {
    /// The consumer group (durable) it was delivered to.
    pub group: &'a str,
    /// Its subject.
    pub subject: &'a str,
    /// The stream that stores it.
    pub stream: &'a str,
    /// Its sequence in that stream.
    pub stream_sequence: u64,
    /// How many times it was delivered, this time included.
    pub delivered: u64,
}

/// The process span of a delivery, its fields the OpenTelemetry messaging
/// conventions' (those known later are recorded then).
#[doc(hidden)]
pub fn process_span(delivery: Delivered<'_>) -> tracing::Span {
    let Delivered { group, subject, .. } = delivery;
    // The target is the runner's module, as for `publish_span`.
    tracing::info_span!(
        target: "jetevents::consume::runner::delivery",
        "process",
        // Formatted only for a span or log someone collects: tracing builds
        // the fields of a disabled span too when its `log` feature is on.
        otel.name = %OperationName { operation: "process", subject },
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = subject,
        messaging.destination.template = %DestinationTemplate(subject),
        messaging.consumer.group.name = group,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        messaging.nats.stream = delivery.stream,
        // Signed: tracing-opentelemetry exports u64 fields as strings.
        messaging.nats.stream.sequence = i64::try_from(delivery.stream_sequence).unwrap_or(i64::MAX),
        messaging.nats.message.delivery_count = i64::try_from(delivery.delivered).unwrap_or(i64::MAX),
        cloudevents.event_id = tracing::field::Empty,
        cloudevents.event_type = tracing::field::Empty,
        cloudevents.event_source = tracing::field::Empty,
        cloudevents.event_spec_version = "1.0",
        jetevents.settle = tracing::field::Empty,
        jetevents.nak_delay_ms = tracing::field::Empty,
        jetevents.dead_letter.reason = tracing::field::Empty,
        jetevents.terminated = tracing::field::Empty,
        jetevents.unhandled = tracing::field::Empty,
        jetevents.breaker.state = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// `messaging.destination.template`: the subject with its key token
/// replaced by `{key}` ([`crate::subject::destination_template`]).
pub(crate) struct DestinationTemplate<'a>(pub(crate) &'a str);

impl fmt::Display for DestinationTemplate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::subject::before_key(self.0) {
            Some(prefix) => {
                f.write_str(prefix)?;
                f.write_str(".{key}")
            }
            None => f.write_str(self.0),
        }
    }
}

/// `otel.name` of a messaging span: `{operation} {destination template}`.
pub(crate) struct OperationName<'a> {
    pub(crate) operation: &'static str,
    pub(crate) subject: &'a str,
}

impl fmt::Display for OperationName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation)?;
        f.write_str(" ")?;
        DestinationTemplate(self.subject).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_destination_template() {
        for subject in [
            "prod.booking.appointment.confirmed.v1.a-42",
            "prod.booking.appointment.confirmed.v1",
            "prod.booking.appointment.confirmed.v1.a.b",
            "plain",
        ] {
            let template = crate::subject::destination_template(subject);
            assert_eq!(DestinationTemplate(subject).to_string(), template);
            let name = OperationName {
                operation: "publish",
                subject,
            };
            assert_eq!(name.to_string(), format!("publish {template}"));
        }
    }
}
