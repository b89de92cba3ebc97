//! The in-memory JetStream on the jetevents side of the transport seam:
//! the publisher stores into it and the consumer runtime settles its
//! deliveries through the same traits as with NATS.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::jetstream::{Delivery, MemoryJetStream, PublishErrorKind};
use crate::error::BoxError;
use crate::transport::{
    self, DeliveryInfo, PendingStore, StoreFailure, StoreFailureKind, Stored, StreamLookup,
    Transport,
};

impl Transport for MemoryJetStream {
    fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<PendingStore, StoreFailure>> {
        // Stored at once: the answer is there before the caller awaits it.
        let stored = self
            .publish(&subject, Some(&headers), payload)
            .map(|ack| Stored {
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
            .map_err(|err| {
                let kind = match err.kind() {
                    PublishErrorKind::NoStream => StoreFailureKind::NoResponders,
                    PublishErrorKind::WrongLastSequence { actual } => {
                        StoreFailureKind::WrongLastSequence {
                            actual: Some(*actual),
                        }
                    }
                    PublishErrorKind::MaxPayloadExceeded { .. } => {
                        StoreFailureKind::MaxPayloadExceeded
                    }
                    _ => StoreFailureKind::Rejected,
                };
                StoreFailure {
                    kind,
                    source: Box::new(err),
                }
            });
        let pending: PendingStore = std::future::ready(stored).boxed();
        std::future::ready(Ok(pending)).boxed()
    }

    fn max_payload(&self) -> usize {
        MemoryJetStream::max_payload(self)
    }

    fn stream_for_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, StreamLookup> {
        let found = match MemoryJetStream::stream_for_subject(self, subject) {
            Some(_) => StreamLookup::Found,
            None => StreamLookup::NotFound,
        };
        std::future::ready(found).boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        std::future::ready(Ok(())).boxed()
    }
}

/// Settling is synchronous in memory; the futures are ready at once.
fn settled<E: Into<BoxError>>(result: Result<(), E>) -> BoxFuture<'static, Result<(), BoxError>> {
    std::future::ready(result.map_err(Into::into)).boxed()
}

impl transport::Delivery for Delivery {
    fn subject(&self) -> &str {
        Delivery::subject(self)
    }

    fn headers(&self) -> Option<&HeaderMap> {
        Delivery::headers(self)
    }

    fn payload(&self) -> &Bytes {
        Delivery::payload(self)
    }

    fn info(&self) -> Result<DeliveryInfo, BoxError> {
        let info = Delivery::info(self);
        Ok(DeliveryInfo {
            stream: info.stream,
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
            pending: info.pending,
        })
    }

    fn ack(&self, _confirmed: bool) -> BoxFuture<'_, Result<(), BoxError>> {
        settled(Delivery::ack(self))
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        settled(Delivery::nak(self, Some(delay)))
    }

    fn term(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        settled(Delivery::term(self))
    }

    fn progress(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        settled(Delivery::in_progress(self))
    }
}
