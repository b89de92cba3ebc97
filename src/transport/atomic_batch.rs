//! Atomic batches: several messages stored all together or not at all.
//!
//! On NATS this is JetStream's atomic batch publish (server 2.12+, ADR-50):
//! every message carries `Nats-Batch-Id` and `Nats-Batch-Sequence`, the first
//! is a request the server answers with an empty reply (or an error), the
//! middle ones are plain publishes, and the last carries
//! `Nats-Batch-Commit: 1` and gets the PubAck of the whole batch. The server
//! stages the batch and, at the commit, runs the expectations of the first
//! message (`Nats-Expected-Last-Subject-Sequence`) and stores the batch under
//! one lock: contiguous, never interleaved with another writer.

use std::fmt;

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{StoreFailureKind, Transport};
use crate::error::BoxError;

/// One message of a batch.
#[derive(Clone, Debug, Default)]
pub(crate) struct BatchMessage {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// Where the stream stored a batch: `first_sequence..=last_sequence`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredBatch {
    pub(crate) stream: String,
    pub(crate) first_sequence: u64,
    pub(crate) last_sequence: u64,
}

/// Why a batch was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchFailureKind {
    /// No answer in time, or the connection broke: it may be stored.
    TimedOut,
    /// No stream captures the subject, or its leader is being elected.
    NoResponders,
    /// The expected last sequence did not hold; the stream's is `actual`.
    WrongLastSequence { actual: Option<u64> },
    /// Another write to the same subjects is in flight (clustered streams)
    /// or the stream has too many batches in flight: try again.
    Busy,
    /// The stream does not allow atomic publish.
    AtomicPublishDisabled,
    /// More messages than the server takes in one batch.
    TooLarge,
    /// A message id of the batch is already stored: nothing was stored now.
    Duplicate,
    /// This transport has no atomic batches.
    Unsupported,
    /// Refused for another reason.
    Rejected,
}

/// A batch the stream did not store, with the cause.
#[derive(Debug)]
pub(crate) struct BatchFailure {
    pub(crate) kind: BatchFailureKind,
    pub(crate) source: BoxError,
}

impl BatchFailure {
    fn new(kind: BatchFailureKind, source: impl Into<BoxError>) -> BatchFailure {
        BatchFailure {
            kind,
            source: source.into(),
        }
    }
}

impl fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for BatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The default of [`Transport::send_batch`]: one message through
/// [`Transport::send`], nothing more.
pub(crate) fn send_single<T: Transport + ?Sized>(
    transport: &T,
    mut messages: Vec<BatchMessage>,
) -> BoxFuture<'_, Result<StoredBatch, BatchFailure>> {
    async move {
        let (Some(message), true) = (messages.pop(), messages.is_empty()) else {
            return Err(BatchFailure::new(
                BatchFailureKind::Unsupported,
                "this transport stores one message at a time, not atomic batches",
            ));
        };
        let stored = async {
            let pending = transport
                .send(&message.subject, message.headers, message.payload)
                .await?;
            pending.await
        }
        .await
        .map_err(|failure| {
            let kind = match failure.kind {
                StoreFailureKind::TimedOut
                | StoreFailureKind::BrokenPipe
                | StoreFailureKind::DuplicateInProcess => BatchFailureKind::TimedOut,
                StoreFailureKind::NoResponders => BatchFailureKind::NoResponders,
                StoreFailureKind::WrongLastSequence { actual } => {
                    BatchFailureKind::WrongLastSequence { actual }
                }
                StoreFailureKind::MaxPayloadExceeded | StoreFailureKind::Rejected => {
                    BatchFailureKind::Rejected
                }
            };
            BatchFailure::new(kind, failure)
        })?;
        if stored.duplicate {
            return Err(BatchFailure::new(
                BatchFailureKind::Duplicate,
                format!("message id already stored as #{}", stored.sequence),
            ));
        }
        Ok(StoredBatch {
            stream: stored.stream,
            first_sequence: stored.sequence,
            last_sequence: stored.sequence,
        })
    }
    .boxed()
}

/// Sends `messages` as one atomic batch on `nats` (see the module docs).
pub(crate) async fn send_atomic(
    nats: &async_nats::Client,
    messages: Vec<BatchMessage>,
) -> Result<StoredBatch, BatchFailure> {
    let count = messages.len();
    // A fresh batch id per attempt: a half-sent earlier attempt may still be
    // staged under its id until the server abandons it.
    let batch_id = uuid::Uuid::now_v7().simple().to_string();
    let mut commit_ack = None;
    for (index, message) in messages.into_iter().enumerate() {
        let mut headers = message.headers;
        headers.insert(NATS_BATCH_ID, batch_id.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, (index + 1).to_string().as_str());
        let is_last = index + 1 == count;
        if is_last {
            headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
        }
        if index == 0 || is_last {
            // The first message's answer says whether the stream takes
            // batches at all; the last one's is the batch's PubAck.
            let reply = nats
                .request_with_headers(message.subject, headers, message.payload)
                .await
                .map_err(request_failure)?;
            commit_ack = read_reply(&reply.payload)?;
        } else {
            nats.publish_with_headers(message.subject, headers, message.payload)
                .await
                .map_err(|err| BatchFailure::new(BatchFailureKind::TimedOut, err))?;
        }
    }
    let Some(ack) = commit_ack else {
        return Err(BatchFailure::new(
            BatchFailureKind::Rejected,
            "the stream answered the commit without a PubAck",
        ));
    };
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    Ok(StoredBatch {
        first_sequence: ack.sequence.saturating_sub(count - 1),
        last_sequence: ack.sequence,
        stream: ack.stream,
    })
}

fn request_failure(err: async_nats::RequestError) -> BatchFailure {
    let kind = match err.kind() {
        async_nats::RequestErrorKind::NoResponders => BatchFailureKind::NoResponders,
        _ => BatchFailureKind::TimedOut,
    };
    BatchFailure::new(kind, err)
}

/// A PubAck of a committed batch.
#[derive(Debug, serde::Deserialize)]
struct BatchAck {
    stream: String,
    #[serde(rename = "seq")]
    sequence: u64,
}

#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

#[derive(Debug, serde::Deserialize)]
struct Reply {
    error: Option<ApiError>,
    #[serde(flatten)]
    ack: Option<BatchAck>,
}

/// Reads a reply: empty (a staged message), a PubAck or an error.
fn read_reply(payload: &[u8]) -> Result<Option<BatchAck>, BatchFailure> {
    if payload.is_empty() {
        return Ok(None);
    }
    let reply: Reply = serde_json::from_slice(payload)
        .map_err(|err| BatchFailure::new(BatchFailureKind::Rejected, err))?;
    match reply.error {
        Some(error) => Err(BatchFailure::new(
            failure_kind(&error),
            format!("{} (error code {})", error.description, error.err_code),
        )),
        None => Ok(reply.ack),
    }
}

/// The server's error codes (server/errors.json) as failure kinds.
fn failure_kind(error: &ApiError) -> BatchFailureKind {
    match error.err_code {
        10071 => BatchFailureKind::WrongLastSequence {
            actual: super::nats::parse_actual_sequence(&error.description),
        },
        // "wrong last sequence" without a number: another write to the
        // subject is in flight; "duplicate message id is in process"; too
        // many batches in flight.
        10164 | 10158 | 10210 => BatchFailureKind::Busy,
        10174 => BatchFailureKind::AtomicPublishDisabled,
        10199 => BatchFailureKind::TooLarge,
        10201 => BatchFailureKind::Duplicate,
        _ => BatchFailureKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_the_replies_of_a_batch() {
        assert!(read_reply(b"").unwrap().is_none());
        let ack = read_reply(br#"{"stream":"S","seq":12,"batch":"b","count":3}"#)
            .unwrap()
            .unwrap();
        assert_eq!((ack.stream.as_str(), ack.sequence), ("S", 12));
        let err = read_reply(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"},"stream":"S","seq":0}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.kind,
            BatchFailureKind::WrongLastSequence { actual: Some(7) }
        );
        let err = read_reply(
            br#"{"error":{"code":400,"err_code":10174,"description":"atomic publish is disabled"},"stream":"S","seq":0}"#,
        )
        .unwrap_err();
        assert_eq!(err.kind, BatchFailureKind::AtomicPublishDisabled);
    }
}
