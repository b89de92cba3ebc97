//! Fast-ingest batches: many messages into one stream, acknowledged in
//! strides instead of one by one (nats-server 2.14+, ADR-50 "fast-ingest
//! batch publishing"; async-nats has the stream flag, not the protocol).
//!
//! Every message of a batch is a plain publish whose reply subject carries
//! the batch: `<inbox>.<id>.<flow>.fail.<batch seq>.<op>.$FI`, op 0 starting
//! the batch, 1 appending, 3 ending it (an empty message not stored). The server
//! answers on the inbox: the first message with a flow ack (`{"type":"ack",
//! "seq":0,"msgs":N}`, N the stride it will acknowledge in), then a flow ack
//! every N persisted messages, an error message (`"type":"err"`) for a
//! message it refused, and a PubAck for the whole batch (`"batch"`,
//! `"count"`) when it ends: at the commit, or at the first refused message.
//!
//! The gap mode is `fail`: the server persists the messages in batch order
//! without gaps (another publisher's messages may sit between them) and
//! ends the batch at the first lost or refused one, so a flow ack for batch
//! sequence `n` means messages `1..=n` are persisted. A message whose id the
//! stream already holds is skipped as stored. What the server does not say
//! is each message's stream sequence: only the batch's last.

use std::time::Duration;

use async_nats::{HeaderMap, Message, StatusCode, Subject};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};

use super::message_buffer::MessageBuffer;
use super::{StoreFailure, StoreFailureKind, Stored};
use crate::error::BoxError;

/// The stride asked for: the server acknowledges at most every this many
/// messages (its own ceiling is 500, lower with other fast publishers).
const MAX_STRIDE: u16 = 500;

/// Strides of messages sent ahead of the last flow ack: with two, the
/// server persists one stride while the next is on the wire (ADR-50's
/// recommended setting).
const STRIDES_AHEAD: u64 = 2;

/// The operations of the reply subject.
const OP_START: u8 = 0;
const OP_APPEND: u8 = 1;
/// Ends the batch without storing the message that says so (end of
/// batch): the caller need not know which message is its last.
const OP_END: u8 = 3;
/// Asks the server to send its last flow ack again (a lost one stalls the
/// window); it does not take a batch sequence of its own.
const OP_PING: u8 = 4;

/// JetStream's "batch publish not enabled on stream".
const BATCH_PUBLISH_DISABLED: u64 = 10205;

/// One message of a batch. The subject is borrowed from the event it
/// carries (the publisher keeps it for the receipt, or to send the event
/// again): it is copied into the batch's subject buffer as it goes out.
#[derive(Debug)]
pub(crate) struct FastMessage<'a> {
    pub(crate) subject: &'a str,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// Starts fast-ingest batches on a NATS connection.
#[derive(Clone, Debug)]
pub(crate) struct FastBatches {
    pub(crate) nats: async_nats::Client,
    pub(crate) ack_timeout: Duration,
}

/// How the first message of a batch went.
pub(crate) enum Started {
    /// The batch is open; the first message is not confirmed yet.
    Open(Box<FastBatch>),
    /// The stream does not allow batch publish: nothing was stored.
    Disabled(BoxError),
    /// The server answered with a plain PubAck: it predates fast ingest and
    /// stored the first message as a normal publish.
    StoredByOldServer(Stored),
    /// The first message's id is already stored: the server skipped it and
    /// closed the batch.
    Duplicate(Stored),
    /// The first message was refused (or its outcome is unknown): nothing
    /// of the batch is open.
    Failed(StoreFailure),
}

/// An open batch. Dropping it abandons the rest (the server ends a batch
/// without traffic after 10 s); what it confirmed stays persisted.
pub(crate) struct FastBatch {
    nats: async_nats::Client,
    inbox: async_nats::Subscriber,
    /// `<inbox>.<id>.<stride>.fail.`: the reply subject up to the sequence.
    reply_prefix: String,
    /// Where the subjects and replies of the messages sent are written.
    subjects: MessageBuffer,
    ack_timeout: Duration,
    /// Batch sequence of the last message sent.
    sent: u64,
    /// Every message up to this batch sequence is persisted.
    persisted: u64,
    /// The server's current stride.
    stride: u64,
    /// Pings go to a subject of the stream: the first message's.
    ping_subject: String,
    /// The message the server refused (batch sequence) and why: the batch
    /// stops there, and its PubAck is still to come.
    refused: Option<(u64, StoreFailure)>,
    /// The batch has ended: how.
    end: Option<Ended>,
}

/// How a batch ended: the server's final word, or silence.
#[derive(Debug)]
pub(crate) struct Ended {
    /// Messages `1..=persisted` of the batch are persisted.
    pub(crate) persisted: u64,
    /// The message the server refused (its batch sequence) and why;
    /// nothing after it was stored.
    pub(crate) refused: Option<(u64, StoreFailure)>,
    /// No final answer came in time, or one that names no message: those
    /// after `persisted` may or may not be stored.
    pub(crate) unknown: Option<StoreFailure>,
}

impl FastBatches {
    /// Opens a batch with its first message and waits for the server's
    /// answer, which says whether the stream takes fast batches and at
    /// what stride.
    pub(crate) async fn start(&self, first: FastMessage<'_>) -> Started {
        let inbox = self.nats.new_inbox();
        let subscription = match self.nats.subscribe(format!("{inbox}.>")).await {
            Ok(subscription) => subscription,
            Err(err) => return Started::Failed(failure(StoreFailureKind::BrokenPipe, err)),
        };
        let id = uuid::Uuid::now_v7().simple();
        let mut batch = FastBatch {
            nats: self.nats.clone(),
            inbox: subscription,
            reply_prefix: format!("{inbox}.{id}.{MAX_STRIDE}.fail."),
            subjects: MessageBuffer::for_subjects(),
            ack_timeout: self.ack_timeout,
            sent: 0,
            persisted: 0,
            stride: 1,
            ping_subject: first.subject.to_owned(),
            refused: None,
            end: None,
        };
        if let Err(err) = batch.publish(first, OP_START).await {
            return Started::Failed(err);
        }
        let reply = match tokio::time::timeout(self.ack_timeout, batch.inbox.next()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Started::Failed(failure(
                    StoreFailureKind::BrokenPipe,
                    "the connection closed before the batch started",
                ))
            }
            Err(_) => {
                return Started::Failed(failure(
                    StoreFailureKind::TimedOut,
                    "no answer to the first message of the batch",
                ))
            }
        };
        match read_reply(&reply) {
            Reply::Flow { stride, .. } => {
                batch.stride = stride;
                Started::Open(Box::new(batch))
            }
            Reply::Final {
                stream,
                sequence,
                duplicate,
                batch: batch_id,
            } => {
                let stored = Stored {
                    stream,
                    sequence,
                    duplicate,
                };
                match (batch_id, duplicate) {
                    (None, _) => Started::StoredByOldServer(stored),
                    (Some(_), true) => Started::Duplicate(stored),
                    // A batch of one committed at once cannot be: the
                    // first message is never a commit.
                    (Some(_), false) => Started::Failed(failure(
                        StoreFailureKind::Rejected,
                        "the server committed a batch at its first message",
                    )),
                }
            }
            Reply::Refused { failure, code, .. } | Reply::FinalError { failure, code }
                if code == BATCH_PUBLISH_DISABLED =>
            {
                Started::Disabled(failure.source)
            }
            Reply::Refused { failure, .. } | Reply::FinalError { failure, .. } => {
                Started::Failed(failure)
            }
            Reply::Gap | Reply::Unreadable(_) => Started::Failed(failure(
                StoreFailureKind::Rejected,
                "unexpected answer to the first message of the batch",
            )),
        }
    }
}

impl FastBatch {
    /// Every message up to this batch sequence is persisted.
    pub(crate) fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Sends the next message, first waiting while the server is more
    /// than two strides behind. Returns the batch's end instead, with the
    /// message unsent, when the server ended it (a refused message) or
    /// went silent.
    /// On success, the message's batch sequence.
    pub(crate) async fn append(&mut self, message: FastMessage<'_>) -> Result<u64, Ended> {
        self.take_ready_replies();
        // After a refusal the server takes nothing more: wait for its
        // PubAck, which comes once what it took is persisted.
        while self.end.is_none()
            && (self.refused.is_some() || self.sent >= self.persisted + self.stride * STRIDES_AHEAD)
        {
            self.await_reply().await;
        }
        if let Some(end) = self.end.take() {
            return Err(end);
        }
        match self.publish(message, OP_APPEND).await {
            Ok(()) => Ok(self.sent),
            Err(err) => Err(self.silent(err)),
        }
    }

    /// Ends the batch and waits for its PubAck, which comes once every
    /// message the server took is persisted.
    pub(crate) async fn finish(mut self) -> Ended {
        self.take_ready_replies();
        if self.end.is_none() && self.refused.is_none() {
            // Once per batch: the subject outlives the borrow of `self`.
            let subject = self.ping_subject.clone();
            let end = FastMessage {
                subject: &subject,
                headers: HeaderMap::new(),
                payload: Bytes::new(),
            };
            if let Err(err) = self.publish(end, OP_END).await {
                return self.silent(err);
            }
        }
        while self.end.is_none() {
            self.await_reply().await;
        }
        self.end.take().unwrap_or_else(|| Ended {
            persisted: self.persisted,
            refused: None,
            unknown: None,
        })
    }

    /// Publishes the next message of the batch; only a closed connection
    /// refuses it, and then it has no batch sequence.
    async fn publish(&mut self, message: FastMessage<'_>, op: u8) -> Result<(), StoreFailure> {
        let subject = self.subjects.subject(&[message.subject]);
        let reply = self.reply_subject(self.sent + 1, op);
        self.nats
            .publish_with_reply_and_headers(subject, reply, message.headers, message.payload)
            .await
            .map_err(|err| failure(StoreFailureKind::BrokenPipe, err))?;
        self.sent += 1;
        Ok(())
    }

    /// The reply subject of the message at batch `sequence`. Its parts are
    /// ours (an inbox async-nats made, a uuid, numbers, ADR-50's tokens), so
    /// it is valid.
    fn reply_subject(&mut self, sequence: u64, op: u8) -> Subject {
        self.subjects.subject(&[
            &self.reply_prefix,
            itoa::Buffer::new().format(sequence),
            ".",
            itoa::Buffer::new().format(op),
            ".$FI",
        ])
    }

    /// Reads the answers already here, without waiting.
    fn take_ready_replies(&mut self) {
        while self.end.is_none() {
            match self.inbox.next().now_or_never() {
                Some(Some(reply)) => self.apply(&reply),
                Some(None) => {
                    let end = self.silent(failure(
                        StoreFailureKind::BrokenPipe,
                        "the connection closed during the batch",
                    ));
                    self.end = Some(end);
                }
                None => break,
            }
        }
    }

    /// Waits for the next answer; after an ack timeout of silence, asks the
    /// server to repeat its last flow ack (one may have been lost) and waits
    /// once more before the batch counts as silent.
    async fn await_reply(&mut self) {
        for pinged in [false, true] {
            match tokio::time::timeout(self.ack_timeout, self.inbox.next()).await {
                Ok(Some(reply)) => {
                    self.apply(&reply);
                    return;
                }
                Ok(None) => break,
                Err(_) if !pinged => {
                    let ping = self.reply_subject(self.sent, OP_PING);
                    let _ = self
                        .nats
                        .publish_with_reply_and_headers(
                            self.ping_subject.clone(),
                            ping,
                            HeaderMap::new(),
                            Bytes::new(),
                        )
                        .await;
                }
                Err(_) => {}
            }
        }
        let end = self.silent(failure(
            StoreFailureKind::TimedOut,
            "no answer from the stream within the ack timeout",
        ));
        self.end = Some(end);
    }

    fn apply(&mut self, reply: &Message) {
        match read_reply(reply) {
            Reply::Flow { persisted, stride } => {
                self.persisted = self.persisted.max(persisted);
                self.stride = stride.max(1);
            }
            // Informational: in gap mode `fail` the batch's end follows.
            Reply::Gap => {}
            Reply::Unreadable(err) => {
                tracing::debug!(error = %err, "skipped an unreadable fast-ingest answer");
            }
            Reply::Refused {
                sequence, failure, ..
            } => {
                // The first refusal counts: the batch stopped there.
                if self.refused.is_none() {
                    self.refused = Some((sequence, failure));
                }
            }
            Reply::Final { batch, .. } => {
                let count = batch.map_or(self.persisted, |(_, count)| count);
                self.persisted = self.persisted.max(count);
                self.end = Some(Ended {
                    persisted: count,
                    refused: self.refused.take(),
                    unknown: None,
                });
            }
            // An error PubAck in the middle of a batch (a message over the
            // stream's size limit, a batch the server no longer knows) does
            // not say which message it is about: what is unconfirmed is
            // unknown.
            Reply::FinalError { failure, .. } => {
                let end = self.silent(failure);
                self.end = Some(end);
            }
        }
    }

    /// The end of a batch whose server went silent: what it confirmed.
    fn silent(&mut self, cause: StoreFailure) -> Ended {
        Ended {
            persisted: self.persisted,
            refused: self.refused.take(),
            unknown: Some(cause),
        }
    }
}

/// An answer on the batch's inbox.
enum Reply {
    Flow {
        persisted: u64,
        stride: u64,
    },
    Gap,
    /// A message of the batch was refused (`"type":"err"`).
    Refused {
        sequence: u64,
        code: u64,
        failure: StoreFailure,
    },
    /// A PubAck: of the batch (`batch` = its id and count) or, from a
    /// server without fast ingest, of the message alone.
    Final {
        stream: String,
        sequence: u64,
        duplicate: bool,
        batch: Option<(String, u64)>,
    },
    /// A PubAck with an error: the batch did not start, or no stream.
    FinalError {
        code: u64,
        failure: StoreFailure,
    },
    Unreadable(BoxError),
}

/// Every form an answer takes, read in one pass.
#[derive(serde::Deserialize)]
struct RawReply {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    msgs: u64,
    #[serde(default)]
    error: Option<async_nats::jetstream::Error>,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    count: u64,
}

fn read_reply(message: &Message) -> Reply {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Reply::FinalError {
            code: 0,
            failure: failure(
                StoreFailureKind::NoResponders,
                "no stream captures the subject (no responders)",
            ),
        };
    }
    let raw: RawReply = match serde_json::from_slice(&message.payload) {
        Ok(raw) => raw,
        Err(err) => return Reply::Unreadable(err.into()),
    };
    match (raw.kind.as_deref(), raw.error) {
        (Some("ack"), _) => Reply::Flow {
            persisted: raw.seq,
            stride: raw.msgs,
        },
        (Some("gap"), _) => Reply::Gap,
        (Some("err"), Some(error)) => Reply::Refused {
            sequence: raw.seq,
            code: error.error_code().0,
            failure: api_failure(error),
        },
        (Some(other), _) => Reply::Unreadable(format!("unknown batch answer type {other}").into()),
        (None, Some(error)) => Reply::FinalError {
            code: error.error_code().0,
            failure: api_failure(error),
        },
        (None, None) => Reply::Final {
            stream: raw.stream,
            sequence: raw.seq,
            duplicate: raw.duplicate,
            batch: raw.batch.map(|id| (id, raw.count)),
        },
    }
}

fn api_failure(error: async_nats::jetstream::Error) -> StoreFailure {
    use async_nats::jetstream::ErrorCode;
    let kind = match error.error_code() {
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE => StoreFailureKind::WrongLastSequence {
            actual: super::nats::parse_actual_sequence(&error.to_string()),
        },
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => StoreFailureKind::MaxPayloadExceeded,
        ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT => StoreFailureKind::DuplicateInProcess,
        _ => StoreFailureKind::Rejected,
    };
    failure(kind, error)
}

fn failure(kind: StoreFailureKind, source: impl Into<BoxError>) -> StoreFailure {
    StoreFailure {
        kind,
        source: source.into(),
    }
}
