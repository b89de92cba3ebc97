//! Reading every message a stream holds now, once, in order: the
//! maintenance jobs' pass over a stream (claim-check cleanup, re-encryption).

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::Message;
use futures_util::StreamExt;

use crate::error::BoxError;

/// The messages of one stream, from the first to the last stored when the
/// scan started.
pub(crate) struct StreamScan {
    /// `None` once the last message was read (or the stream was empty).
    messages: Option<pull::Ordered>,
}

impl StreamScan {
    /// Starts a scan of `stream` through an ordered consumer; with
    /// `headers_only` the server sends no payloads.
    pub(crate) async fn start(stream: &Stream, headers_only: bool) -> Result<Self, BoxError> {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                headers_only,
                ..Default::default()
            })
            .await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(Self { messages: None });
        }
        Ok(Self {
            messages: Some(consumer.messages().await?),
        })
    }

    /// The next message and its stream sequence; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Result<(u64, Message), BoxError>> {
        let messages = self.messages.as_mut()?;
        let message = match messages.next().await? {
            Ok(message) => message,
            Err(err) => return Some(Err(err.into())),
        };
        let info = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(err) => return Some(Err(err)),
        };
        if info.1 == 0 {
            self.messages = None;
        }
        Some(Ok((info.0, message)))
    }
}
