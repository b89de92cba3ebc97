//! An event read from the stream, decoded once and rendered once as
//! structured CloudEvents JSON, then shared by every client it goes to.

use async_nats::jetstream::Message;
use jetevents::codec::{self, Encoding};

/// One stored event, ready to send.
#[derive(Debug)]
pub(crate) struct StreamEvent {
    pub(crate) sequence: u64,
    pub(crate) subject: String,
    pub(crate) event_type: String,
    /// The CloudEvents JSON format of the event.
    pub(crate) json: String,
    /// The trace the publisher put in the event, for the send span's parent.
    pub(crate) trace: opentelemetry::Context,
}

impl StreamEvent {
    /// `None` for messages that are not CloudEvents (logged, then skipped).
    pub(crate) fn from_message(message: &Message) -> Option<Self> {
        let sequence = message.info().ok()?.stream_sequence;
        let envelope = match codec::decode(message.headers.as_ref(), &message.payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::debug!(%error, sequence, "skipping a message that is not a CloudEvent");
                return None;
            }
        };
        let (_, json) = codec::encode(&envelope, Encoding::Structured).ok()?;
        Some(Self {
            sequence,
            subject: message.subject.to_string(),
            event_type: envelope.event_type.clone(),
            json: String::from_utf8(json.to_vec()).ok()?,
            trace: jetevents::trace::extract(&envelope),
        })
    }
}
