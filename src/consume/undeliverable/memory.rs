//! The in-memory side of the watcher: the advisory comes from
//! [`MemoryJetStream::advisories`] and the stored message from
//! [`MemoryJetStream::messages`], written back into the header block the
//! server would have stored, so the copy is made as on NATS.

use tokio::sync::broadcast;

use crate::testing::{Advisory, MemoryJetStream};

use super::header_block::encode_header_block;
use super::{MaxDeliveries, Skip, Stored, Watcher};

/// Dead-letters what the max-deliveries advisories of the watcher's group
/// name, until the engine is dropped. `advisories` is subscribed by the
/// caller, before the consumer's first pull can emit one.
pub(super) async fn run(
    watcher: Watcher,
    memory: MemoryJetStream,
    mut advisories: broadcast::Receiver<Advisory>,
) {
    loop {
        let advisory = match advisories.recv().await {
            Ok(advisory) => advisory,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    consumer = %watcher.group,
                    missed,
                    "missed in-memory advisories; some undeliverable events may not be \
                     dead-lettered"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Advisory::MaxDeliveries {
            stream,
            consumer,
            stream_sequence,
            deliveries,
        } = advisory
        else {
            continue;
        };
        if stream != watcher.stream || consumer != watcher.group {
            continue;
        }
        let stored = memory
            .messages(&stream)
            .into_iter()
            .find(|message| message.sequence == stream_sequence)
            .map(|message| Stored {
                subject: message.subject,
                header_block: message.headers.as_ref().map(encode_header_block),
                payload: message.payload,
            })
            .ok_or(Skip::Deleted);
        let advisory = MaxDeliveries {
            stream_sequence,
            deliveries,
        };
        watcher.on_max_deliveries(&advisory, stored).await;
    }
}
