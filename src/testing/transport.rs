//! The in-memory JetStream on the jetevents side of the transport seam:
//! the publisher stores into it and the consumer runtime settles its
//! deliveries through the same traits as with NATS.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use futures_util::StreamExt;

use super::jetstream::{
    BatchRefusal, Delivery, MemoryError, MemoryJetStream, PublishErrorKind, StoredMessage,
};
use crate::error::BoxError;
use crate::transport::{
    self, BatchFailure, BatchFailureKind, BatchMessage, DeliveryInfo, OrderedRead, PendingStore,
    ReadFrom, StoreFailure, StoreFailureKind, Stored, StoredBatch, StreamLookup, StreamMessage,
    Transport,
};

impl Transport for MemoryJetStream {
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<PendingStore, StoreFailure>> {
        // Stored at once: the answer is there before the caller awaits it.
        let stored = self
            .publish(subject, Some(&headers), payload)
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

    fn send_batch(
        &self,
        messages: Vec<BatchMessage>,
    ) -> BoxFuture<'_, Result<StoredBatch, BatchFailure>> {
        let batch = messages
            .into_iter()
            .map(|message| (message.subject, message.headers, message.payload))
            .collect();
        let stored = self
            .publish_batch(batch)
            .map(|(stream, first_sequence, last_sequence)| StoredBatch {
                stream,
                first_sequence,
                last_sequence,
            })
            .map_err(|refusal| {
                let kind = match &refusal {
                    BatchRefusal::Duplicate { .. } => BatchFailureKind::Duplicate,
                    BatchRefusal::Refused(PublishErrorKind::NoStream) => {
                        BatchFailureKind::NoResponders
                    }
                    BatchRefusal::Refused(PublishErrorKind::WrongLastSequence { actual }) => {
                        BatchFailureKind::WrongLastSequence {
                            actual: Some(*actual),
                        }
                    }
                    BatchRefusal::Refused(_) => BatchFailureKind::Rejected,
                };
                BatchFailure {
                    kind,
                    source: format!("{refusal:?}").into(),
                }
            });
        std::future::ready(stored).boxed()
    }

    fn last_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>> {
        let last = self.last_message_for(stream, filter);
        std::future::ready(read(last.map(|last| last.map(stream_message)))).boxed()
    }

    fn next_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>> {
        let next = self.next_message_for(stream, filter, from);
        std::future::ready(read(next.map(|next| next.map(stream_message)))).boxed()
    }

    fn read_ordered<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: ReadFrom,
    ) -> BoxFuture<'a, Result<OrderedRead, BoxError>> {
        let started = (|| {
            let start = match from {
                ReadFrom::Sequence(sequence) => sequence.max(1),
                ReadFrom::Time(time) => self.first_sequence_since(stream, time)?,
            };
            let pending = self.count_matching(stream, filter, start)?;
            let (engine, stream, filter) = (self.clone(), stream.to_owned(), filter.to_owned());
            // `None` once an error ended the read.
            let messages = futures_util::stream::unfold(Some(start), move |next| {
                let (engine, stream, filter) = (engine.clone(), stream.clone(), filter.clone());
                async move {
                    let message = engine.wait_message_for(&stream, &filter, next?).await;
                    Some(match message {
                        Ok(message) => (
                            Ok(stream_message(message.clone())),
                            Some(message.sequence + 1),
                        ),
                        Err(err) => (Err(BoxError::from(err)), None),
                    })
                }
            });
            Ok(OrderedRead {
                pending,
                messages: messages.boxed(),
            })
        })();
        std::future::ready(read(started)).boxed()
    }
}

fn read<T>(result: Result<T, MemoryError>) -> Result<T, BoxError> {
    result.map_err(BoxError::from)
}

fn stream_message(message: StoredMessage) -> StreamMessage {
    StreamMessage {
        subject: message.subject,
        sequence: message.sequence,
        headers: message.headers,
        payload: message.payload,
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

    fn info(&self) -> Result<DeliveryInfo<'_>, BoxError> {
        let info = &self.info;
        Ok(DeliveryInfo {
            stream: info.stream.as_str().into(),
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
            pending: info.pending,
        })
    }

    fn ack(
        &self,
        _confirmed: bool,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send + '_ {
        std::future::ready(Delivery::ack(self).map_err(Into::into))
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
