//! The transport over NATS JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, ErrorCode};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::OnceCell;

use super::publish_acks::PublishAcks;
use super::{
    atomic_batch, BatchFailure, BatchMessage, OrderedRead, PendingStore, ReadFrom, StoreFailure,
    StoreFailureKind, Stored, StoredBatch, StreamLookup, StreamMessage, Transport,
};
use crate::error::BoxError;

/// How long the stream lookup may take before it counts as unknown.
const STREAM_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// JetStream on a NATS connection.
#[derive(Clone, Debug)]
pub(crate) struct NatsTransport {
    pub(crate) nats: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    /// Publish acks, subscribed on the first publish.
    acks: Arc<OnceCell<PublishAcks>>,
    ack_timeout: Duration,
}

impl NatsTransport {
    pub(crate) fn new(
        nats: async_nats::Client,
        jetstream: jetstream::Context,
        ack_timeout: Duration,
    ) -> NatsTransport {
        NatsTransport {
            nats,
            jetstream,
            acks: Arc::new(OnceCell::new()),
            ack_timeout,
        }
    }
}

impl Transport for NatsTransport {
    fn send<'a>(
        &'a self,
        subject: &'a str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<PendingStore, StoreFailure>> {
        async move {
            let acks =
                match self.acks.get() {
                    Some(acks) => acks,
                    // Boxed: inline, the subscribing would make every send's
                    // future as large as itself, and a boxed future of 1 KiB or
                    // more costs the allocator a pass over its free lists.
                    None => Box::pin(self.acks.get_or_try_init(|| {
                        PublishAcks::start(self.nats.clone(), self.ack_timeout)
                    }))
                    .await
                    .map_err(|err| StoreFailure {
                        // Only a connection being closed refuses a subscription.
                        kind: StoreFailureKind::BrokenPipe,
                        source: Box::new(err),
                    })?,
                };
            let ack = acks
                .send(subject, headers, payload)
                .await
                .map_err(store_failure)?;
            let pending: PendingStore = async move {
                let ack = ack.await.map_err(store_failure)?;
                Ok(Stored {
                    stream: ack.stream,
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }
            .boxed();
            Ok(pending)
        }
        .boxed()
    }

    fn max_payload(&self) -> usize {
        // An atomic read; `server_info()` would clone the whole INFO on
        // every publish.
        self.nats.max_payload()
    }

    fn stream_for_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, StreamLookup> {
        async move {
            let lookup = self.jetstream.stream_by_subject(subject);
            match tokio::time::timeout(STREAM_LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(_)) => StreamLookup::Found,
                Ok(Err(err))
                    if matches!(
                        err.kind(),
                        jetstream::context::GetStreamByNameErrorKind::NotFound
                    ) =>
                {
                    StreamLookup::NotFound
                }
                _ => StreamLookup::Unknown,
            }
        }
        .boxed()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        async move { self.nats.flush().await.map_err(BoxError::from) }.boxed()
    }

    fn send_batch(
        &self,
        messages: Vec<BatchMessage>,
    ) -> BoxFuture<'_, Result<StoredBatch, BatchFailure>> {
        // One message is atomic already, and a plain publish also works on
        // streams that do not allow atomic publish.
        if messages.len() == 1 {
            return atomic_batch::send_single(self, messages);
        }
        async move { atomic_batch::send_atomic(&self.nats, messages).await }.boxed()
    }

    fn fast_batches(&self) -> Option<super::fast_ingest::FastBatches> {
        Some(super::fast_ingest::FastBatches {
            nats: self.nats.clone(),
            ack_timeout: self.ack_timeout,
        })
    }

    fn last_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>> {
        async move {
            let stream = self.jetstream.get_stream_no_info(stream).await?;
            found(stream.direct_get_last_for_subject(filter).await)
        }
        .boxed()
    }

    fn next_message<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<Option<StreamMessage>, BoxError>> {
        async move {
            let stream = self.jetstream.get_stream_no_info(stream).await?;
            found(stream.direct_get_next_for_subject(filter, Some(from)).await)
        }
        .boxed()
    }

    fn read_ordered<'a>(
        &'a self,
        stream: &'a str,
        filter: &'a str,
        from: ReadFrom,
    ) -> BoxFuture<'a, Result<OrderedRead, BoxError>> {
        async move {
            let deliver_policy = match from {
                ReadFrom::Sequence(sequence) => {
                    jetstream::consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: sequence.max(1),
                    }
                }
                ReadFrom::Time(time) => jetstream::consumer::DeliverPolicy::ByStartTime {
                    start_time: time.into(),
                },
            };
            let consumer = self
                .jetstream
                .get_stream_no_info(stream)
                .await?
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    filter_subject: filter.to_owned(),
                    deliver_policy,
                    ..Default::default()
                })
                .await?;
            let pending = consumer.cached_info().num_pending;
            let messages = consumer.messages().await?.map(|message| {
                let message = message?;
                let sequence = message.info()?.stream_sequence;
                let message = message.message;
                Ok(StreamMessage {
                    subject: message.subject.to_string(),
                    sequence,
                    headers: message.headers,
                    payload: message.payload,
                })
            });
            Ok(OrderedRead {
                pending,
                messages: messages.boxed(),
            })
        }
        .boxed()
    }
}

/// A direct get's message, `None` when no message matches.
fn found(
    got: Result<jetstream::message::StreamMessage, jetstream::stream::DirectGetError>,
) -> Result<Option<StreamMessage>, BoxError> {
    match got {
        Ok(message) => Ok(Some(StreamMessage {
            subject: message.subject.to_string(),
            sequence: message.sequence,
            headers: Some(message.headers),
            payload: message.payload,
        })),
        Err(err) if matches!(err.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

fn store_failure(err: jetstream::context::PublishError) -> StoreFailure {
    let kind = match err.kind() {
        PublishErrorKind::TimedOut => StoreFailureKind::TimedOut,
        PublishErrorKind::StreamNotFound => StoreFailureKind::NoResponders,
        PublishErrorKind::WrongLastSequence => StoreFailureKind::WrongLastSequence {
            actual: parse_actual_sequence(&err.to_string()),
        },
        PublishErrorKind::MaxPayloadExceeded => StoreFailureKind::MaxPayloadExceeded,
        PublishErrorKind::BrokenPipe => StoreFailureKind::BrokenPipe,
        _ if jetstream_code(&err) == Some(ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT) => {
            StoreFailureKind::DuplicateInProcess
        }
        _ => StoreFailureKind::Rejected,
    };
    StoreFailure {
        kind,
        source: Box::new(err),
    }
}

/// The JetStream error code behind a publish error, when the server sent one.
fn jetstream_code(err: &jetstream::context::PublishError) -> Option<ErrorCode> {
    std::error::Error::source(err)?
        .downcast_ref::<jetstream::Error>()
        .map(jetstream::Error::error_code)
}

/// The server's description is "wrong last sequence: N"; async-nats prefixes
/// its own kind text, which reads the same, hence the last occurrence.
pub(crate) fn parse_actual_sequence(text: &str) -> Option<u64> {
    let rest = &text[text.rfind("wrong last sequence: ")? + "wrong last sequence: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::{parse_actual_sequence, store_failure};
    use crate::transport::StoreFailureKind;

    /// Error 10158: an attempt with the same message id is still being
    /// stored (seen through partitions); not a refusal.
    #[test]
    fn duplicate_in_process_is_not_a_refusal() {
        let in_process: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":409,"err_code":10158,"description":"duplicate message id is in process"}"#,
        )
        .unwrap();
        let err = async_nats::jetstream::context::PublishError::with_source(
            async_nats::jetstream::context::PublishErrorKind::Other,
            in_process,
        );
        assert!(matches!(
            store_failure(err).kind,
            StoreFailureKind::DuplicateInProcess
        ));
    }

    #[test]
    fn reads_actual_sequence_from_server_text() {
        assert_eq!(
            parse_actual_sequence("wrong last sequence: 42 (code 400, error code 10071)"),
            Some(42)
        );
        assert_eq!(
            parse_actual_sequence(
                "wrong last sequence: wrong last sequence: 7 (code 400, error code 10071)"
            ),
            Some(7)
        );
        assert_eq!(parse_actual_sequence("something else"), None);
    }
}
