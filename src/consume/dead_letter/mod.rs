//! The dead-letter stream: events no handler could handle, kept with why.
//!
//! An entry is the original message (headers and payload as received) copied to
//! `{prefix}.{consumer}.{original subject}` in the dead-letter stream (by
//! default `DEAD_LETTERS`, subjects `deadletter.>`), with these headers added:
//!
//! | header                     | value                                        |
//! |----------------------------|----------------------------------------------|
//! | `Jetevents-DL-Reason`      | `permanent`, `attempts_exhausted`, `undecodable`, `unhandled` or `undeliverable` |
//! | `Jetevents-DL-Error`       | the error and its causes (one line, at most 1 KiB) |
//! | `Jetevents-DL-Subject`     | the original subject                         |
//! | `Jetevents-DL-Stream`      | the original stream                          |
//! | `Jetevents-DL-Sequence`    | the original stream sequence                 |
//! | `Jetevents-DL-Consumer`    | the consumer (group) that gave up            |
//! | `Jetevents-DL-Deliveries`  | deliveries so far                            |
//! | `Jetevents-DL-Time`        | when it was dead-lettered (RFC 3339, UTC)    |
//! | `Jetevents-DL-Held-Behind` | [partitioned groups](crate::consume::partitioned) only: events of its partition waiting behind it when it was dead-lettered |
//! | `Jetevents-DL-Original-Headers` | `undeliverable` entries only: the original header block, byte for byte, base64 (standard alphabet, padded) |
//!
//! An `undeliverable` entry is one the client could not even receive (a
//! header block that is not UTF-8, a header line without `:`, an invalid
//! header name: async-nats drops the connection on such a message) or that
//! was never settled (every delivery crashed its instance), so the server
//! reached the consumer's `max_deliver`. It is copied from the stream, not
//! from a delivery: its header lines that parse are carried as headers, and
//! the whole block as received is kept in `Jetevents-DL-Original-Headers`
//! ([`DeadLetter::original_header_block`]) so nothing is lost.
//!
//! `Nats-*` headers of the original (message id, expectations, TTL) are not
//! copied: they are instructions to the original stream, not event data. The
//! copy's own `Nats-Msg-Id` is `dl:{stream}:{sequence}:{consumer}`, so a copy
//! retried after a lost ack is stored once.
//!
//! [`DeadLetters`] lists, inspects, redrives and deletes entries.

mod copy;
mod dead_letters;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::codec::DecodeError;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::nats::HeaderMap;

pub use dead_letters::{DeadLetters, Redriven};

pub(crate) use copy::{dead_letter_message, ensure_stream, Failure};

/// Default name of the dead-letter stream.
pub const DEFAULT_STREAM: &str = "DEAD_LETTERS";
/// Default first subject token of dead-letter entries.
pub const DEFAULT_SUBJECT_PREFIX: &str = "deadletter";

/// Header: why the event was dead-lettered ([`DeadLetterReason`]).
pub const REASON: &str = "Jetevents-DL-Reason";
/// Header: the error text.
pub const ERROR: &str = "Jetevents-DL-Error";
/// Header: the subject the event was published on.
pub const ORIGINAL_SUBJECT: &str = "Jetevents-DL-Subject";
/// Header: the stream the event came from.
pub const ORIGINAL_STREAM: &str = "Jetevents-DL-Stream";
/// Header: the event's sequence in that stream.
pub const ORIGINAL_SEQUENCE: &str = "Jetevents-DL-Sequence";
/// Header: the consumer (group) that gave up on the event.
pub const CONSUMER: &str = "Jetevents-DL-Consumer";
/// Header: how many times the event was delivered.
pub const DELIVERIES: &str = "Jetevents-DL-Deliveries";
/// Header: how many handler runs failed (absent when unknown, e.g. for
/// `undeliverable` entries, whose handler may never have run).
pub const FAILED_RUNS: &str = "Jetevents-DL-Failed-Runs";
/// Header: when the event was dead-lettered.
pub const TIME: &str = "Jetevents-DL-Time";
/// Header of `undeliverable` entries: the original NATS header block
/// (`NATS/1.0` line included), base64 with the standard padded alphabet.
/// The block may be neither UTF-8 nor parseable, which is why it is kept
/// encoded rather than as headers.
pub const ORIGINAL_HEADERS: &str = "Jetevents-DL-Original-Headers";
/// Header of entries from a [partitioned group](crate::consume::partitioned):
/// how many later events of the event's partition were held behind it (the
/// partition's pending count when it was dead-lettered); they are handled
/// next, in order.
pub const HELD_BEHIND: &str = "Jetevents-DL-Held-Behind";

const OUR_HEADERS: [&str; 11] = [
    REASON,
    ERROR,
    ORIGINAL_SUBJECT,
    ORIGINAL_STREAM,
    ORIGINAL_SEQUENCE,
    CONSUMER,
    DELIVERIES,
    FAILED_RUNS,
    TIME,
    ORIGINAL_HEADERS,
    HELD_BEHIND,
];

/// Longest error text kept in an entry, in bytes.
const MAX_ERROR_LEN: usize = 1024;

/// Why an event went to the dead-letter stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The handler returned a permanent error.
    Permanent,
    /// The handler failed transiently on the last allowed attempt (or the
    /// event outlived its attempts, e.g. an instance crashed on the last one).
    AttemptsExhausted,
    /// The message is not a CloudEvent we can read, or its data does not
    /// deserialize into the handler's type.
    Undecodable,
    /// No handler for the event's type and the consumer's
    /// [`UnhandledPolicy`](super::UnhandledPolicy) is `DeadLetter`.
    Unhandled,
    /// The server reached the consumer's `max_deliver` without the event
    /// being settled: the client could not receive it (a header block
    /// async-nats cannot read drops the connection) or every delivery
    /// ended without a settle (the handler crashed its process). Copied
    /// from the stream with its original header block
    /// ([`DeadLetter::original_header_block`]).
    Undeliverable,
    /// The event's data is encrypted and could not be decrypted: tampered
    /// with, or its key is unknown (feature `encryption`).
    Undecryptable,
    /// The event's data is encrypted with its aggregate's data key, which
    /// was deleted (crypto-shredding; feature `encryption`).
    Shredded,
    /// The event's data was claim-checked and its object is gone from the
    /// bucket (see [`claim_check`](crate::claim_check)).
    ClaimMissing,
    /// The event's data was claim-checked and the object's bytes do not
    /// match the event's digest, or the reference is malformed.
    ClaimCorrupt,
    /// A reason written by a newer version.
    Other(String),
}

impl DeadLetterReason {
    /// The header value.
    ///
    /// ```
    /// use jetevents::consume::DeadLetterReason;
    /// assert_eq!(DeadLetterReason::AttemptsExhausted.as_str(), "attempts_exhausted");
    /// assert_eq!("undecodable".parse::<DeadLetterReason>().unwrap(), DeadLetterReason::Undecodable);
    /// ```
    pub fn as_str(&self) -> &str {
        match self {
            Self::Permanent => "permanent",
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::Undecodable => "undecodable",
            Self::Unhandled => "unhandled",
            Self::Undeliverable => "undeliverable",
            Self::Undecryptable => "undecryptable",
            Self::Shredded => "shredded",
            Self::ClaimMissing => "claim_missing",
            Self::ClaimCorrupt => "claim_corrupt",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadLetterReason {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "permanent" => Self::Permanent,
            "attempts_exhausted" => Self::AttemptsExhausted,
            "undecodable" => Self::Undecodable,
            "unhandled" => Self::Unhandled,
            "undeliverable" => Self::Undeliverable,
            "undecryptable" => Self::Undecryptable,
            "shredded" => Self::Shredded,
            "claim_missing" => Self::ClaimMissing,
            "claim_corrupt" => Self::ClaimCorrupt,
            other => Self::Other(other.to_owned()),
        })
    }
}

/// Where dead-lettered events go: stream name and subject prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetterConfig {
    /// Stream name (default [`DEFAULT_STREAM`]).
    pub stream: String,
    /// First subject token (default [`DEFAULT_SUBJECT_PREFIX`]); the stream
    /// captures `{prefix}.>`.
    pub subject_prefix: String,
}

impl DeadLetterConfig {
    /// Dead letters go to `stream`, on subjects under `subject_prefix`.
    pub fn new(stream: impl Into<String>, subject_prefix: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            subject_prefix: subject_prefix.into(),
        }
    }
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self::new(DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX)
    }
}

/// One dead-lettered event.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Sequence of the entry in the dead-letter stream: its handle for
    /// [`DeadLetters::get`], [`redrive`](DeadLetters::redrive) and
    /// [`delete`](DeadLetters::delete).
    pub sequence: u64,
    /// Why it was dead-lettered.
    pub reason: DeadLetterReason,
    /// The error text (empty when there was no error, e.g. unhandled).
    pub error: String,
    /// The subject the event was published on.
    pub original_subject: String,
    /// The stream it came from.
    pub original_stream: String,
    /// Its sequence in that stream.
    pub original_sequence: u64,
    /// The consumer (group) that gave up.
    pub consumer: String,
    /// How many times it was delivered (handler runs, deliveries left for
    /// another instance, deliveries cut short by a shutdown or a crash).
    pub delivery_count: u64,
    /// How many of its handler runs failed, when known.
    pub failed_runs: Option<u32>,
    /// Entries of a partitioned group: how many later events of its
    /// partition were held behind it ([`HELD_BEHIND`]).
    pub held_behind: Option<u64>,
    /// When it was dead-lettered.
    pub time: Option<DateTime<Utc>>,
    /// The original headers (without the dead-letter ones). For
    /// `undeliverable` entries: the header lines that could be read.
    pub headers: HeaderMap,
    /// The original header block exactly as stored (`undeliverable` entries
    /// only): it may hold lines [`headers`](Self::headers) lacks because
    /// they are not UTF-8 or not headers.
    pub original_header_block: Option<Bytes>,
    /// The original payload.
    pub payload: Bytes,
}

impl DeadLetter {
    /// The original event, decoded (fails for `undecodable` entries).
    pub fn envelope(&self) -> Result<Envelope, DecodeError> {
        crate::codec::decode(Some(&self.headers), &self.payload)
    }

    fn from_stream_message(
        message: async_nats::jetstream::message::StreamMessage,
    ) -> Result<Self, DeadLetterError> {
        Self::from_parts(message.sequence, &message.headers, message.payload)
    }

    pub(crate) fn from_parts(
        sequence: u64,
        headers: &HeaderMap,
        payload: Bytes,
    ) -> Result<Self, DeadLetterError> {
        let get = |name: &str| headers.get_last(name).map(|v| v.as_str().to_owned());
        let required = |name: &'static str| {
            get(name).ok_or_else(|| Error::new(DeadLetterErrorKind::NotADeadLetter(sequence)))
        };
        let number = |name: &'static str| -> Result<u64, DeadLetterError> {
            required(name)?.parse().map_err(|err| {
                Error::with_source(DeadLetterErrorKind::NotADeadLetter(sequence), err)
            })
        };
        let reason = required(REASON)?
            .parse::<DeadLetterReason>()
            .unwrap_or_else(|never| match never {});
        let mut original = HeaderMap::new();
        for (name, values) in headers.iter() {
            let name_str: &str = name.as_ref();
            if OUR_HEADERS
                .iter()
                .any(|ours| ours.eq_ignore_ascii_case(name_str))
            {
                continue;
            }
            if name_str.eq_ignore_ascii_case("Nats-Msg-Id") {
                continue;
            }
            for value in values {
                original.append(name.clone(), value.clone());
            }
        }
        Ok(Self {
            sequence,
            reason,
            error: get(ERROR).unwrap_or_default(),
            original_subject: required(ORIGINAL_SUBJECT)?,
            original_stream: get(ORIGINAL_STREAM).unwrap_or_default(),
            original_sequence: number(ORIGINAL_SEQUENCE)?,
            consumer: get(CONSUMER).unwrap_or_default(),
            delivery_count: number(DELIVERIES)?,
            failed_runs: get(FAILED_RUNS).and_then(|runs| runs.parse().ok()),
            held_behind: get(HELD_BEHIND).and_then(|held| held.parse().ok()),
            time: get(TIME)
                .and_then(|time| DateTime::parse_from_rfc3339(&time).ok())
                .map(|time| time.with_timezone(&Utc)),
            headers: original,
            original_header_block: get(ORIGINAL_HEADERS)
                .and_then(|encoded| crate::codec::base64::decode(&encoded))
                .map(Bytes::from),
            payload,
        })
    }
}

/// What went wrong with a dead-letter operation.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DeadLetterErrorKind {
    /// No entry with this sequence.
    NotFound(u64),
    /// The message at this sequence lacks the dead-letter headers.
    NotADeadLetter(u64),
    /// The dead-letter stream does not exist (nothing was dead-lettered yet).
    NoStream,
    /// Reading, writing or deleting in the dead-letter stream failed.
    Stream,
    /// Publishing the redriven event failed (no stream captures its subject,
    /// timeout, ...).
    Redrive,
}

impl fmt::Display for DeadLetterErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(seq) => write!(f, "no dead letter with sequence {seq}"),
            Self::NotADeadLetter(seq) => write!(f, "message {seq} is not a dead letter"),
            Self::NoStream => f.write_str("dead-letter stream not found"),
            Self::Stream => f.write_str("dead-letter stream request failed"),
            Self::Redrive => f.write_str("redrive publish failed"),
        }
    }
}

/// Error of [`DeadLetters`] operations.
pub type DeadLetterError = Error<DeadLetterErrorKind>;
