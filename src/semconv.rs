//! The OpenTelemetry attribute names jetevents writes, in one place: the
//! messaging conventions, the CloudEvents ones and our own. Span macros
//! need their field names as literals and spell them out; everything that
//! takes a name as a `&str` (metric attributes, `Span::record`) uses these.

/// `messaging.system`; its value is [`NATS`].
pub(crate) const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of [`MESSAGING_SYSTEM`].
pub(crate) const NATS: &str = "nats";
/// `messaging.operation.name`: `publish`, `process`.
pub(crate) const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.consumer.group.name`: the durable's name.
pub(crate) const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.message.id`: the event id.
pub(crate) const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.message.conversation_id`: the correlation id.
pub(crate) const MESSAGING_MESSAGE_CONVERSATION_ID: &str = "messaging.message.conversation_id";
/// `messaging.nats.stream.sequence`: where the stream stored the event.
pub(crate) const MESSAGING_NATS_STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
/// `cloudevents.event_id`.
pub(crate) const CLOUDEVENTS_EVENT_ID: &str = "cloudevents.event_id";
/// `cloudevents.event_type`.
pub(crate) const CLOUDEVENTS_EVENT_TYPE: &str = "cloudevents.event_type";
/// `cloudevents.event_source`.
pub(crate) const CLOUDEVENTS_EVENT_SOURCE: &str = "cloudevents.event_source";
/// `error.type`: a low-cardinality name of what went wrong.
pub(crate) const ERROR_TYPE: &str = "error.type";
/// `otel.status_code`, read by tracing-opentelemetry.
pub(crate) const OTEL_STATUS_CODE: &str = "otel.status_code";
/// `otel.status_description`, read by tracing-opentelemetry.
pub(crate) const OTEL_STATUS_DESCRIPTION: &str = "otel.status_description";
/// `operation`: what the consumer failed to send (ack, nak, ...).
pub(crate) const SETTLE_OPERATION: &str = "operation";
/// `jetevents.unhandled.action`: what an instance did with an event it has
/// no handler for.
pub(crate) const UNHANDLED_ACTION: &str = "jetevents.unhandled.action";
/// The projection a projection metric is about (its runner's name).
pub(crate) const PROJECTION_NAME: &str = "jetevents.projection.name";
