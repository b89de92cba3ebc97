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

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::stream::{self, RawMessageErrorKind, StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::client::Client;
use crate::codec::DecodeError;
use crate::envelope::Envelope;
use crate::error::Error;

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

const OUR_HEADERS: [&str; 10] = [
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
            other => Self::Other(other.to_owned()),
        })
    }
}

/// Where dead-lettered events go: stream name and subject prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// Stream name (default [`DEFAULT_STREAM`]).
    pub stream: String,
    /// First subject token (default [`DEFAULT_SUBJECT_PREFIX`]); the stream
    /// captures `{prefix}.>`.
    pub subject_prefix: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            stream: DEFAULT_STREAM.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
        }
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

    fn from_parts(
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

/// Where a redriven event was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// The dead-letter entry it came from (now deleted).
    pub dead_letter_sequence: u64,
    /// The subject it was published on (the original one).
    pub subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its new sequence there.
    pub sequence: u64,
}

/// Lists, inspects, redrives and deletes dead-lettered events.
///
/// ```no_run
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use jetevents::consume::{DeadLetterReason, DeadLetters};
///
/// let dead_letters = DeadLetters::new(&client);
/// for entry in dead_letters.list_for_consumer("billing", 100).await? {
///     println!("{} {} {}: {}", entry.sequence, entry.original_subject, entry.reason, entry.error);
///     if entry.reason == DeadLetterReason::AttemptsExhausted {
///         // The dependency is back: try again.
///         dead_letters.redrive(entry.sequence).await?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DeadLetters {
    client: Client,
    config: DeadLetterConfig,
}

impl DeadLetters {
    /// The default dead-letter stream ([`DEFAULT_STREAM`]).
    pub fn new(client: &Client) -> Self {
        Self::with_config(client, DeadLetterConfig::default())
    }

    /// A dead-letter stream of another name or subject prefix.
    pub fn with_config(client: &Client, config: DeadLetterConfig) -> Self {
        Self {
            client: client.clone(),
            config,
        }
    }

    /// Creates the dead-letter stream if it does not exist (a consumer does
    /// this when it starts).
    pub async fn ensure_stream(&self) -> Result<(), DeadLetterError> {
        ensure_stream(&self.client, &self.config).await
    }

    /// Up to `limit` entries, oldest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.list_filtered(format!("{}.>", self.config.subject_prefix), limit)
            .await
    }

    /// Up to `limit` entries that `consumer` gave up on, oldest first.
    pub async fn list_for_consumer(
        &self,
        consumer: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.list_filtered(
            format!("{}.{}.>", self.config.subject_prefix, consumer),
            limit,
        )
        .await
    }

    async fn list_filtered(
        &self,
        filter: String,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let stream = self.stream().await?;
        let mut entries = Vec::new();
        let mut next = 1;
        while entries.len() < limit {
            let result = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(filter.clone())
                .send()
                .await;
            let message = match result {
                Ok(message) => message,
                Err(err) if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(err) => return Err(Error::with_source(DeadLetterErrorKind::Stream, err)),
            };
            next = message.sequence.saturating_add(1);
            // Foreign messages in the stream are skipped, not fatal.
            if let Ok(entry) = DeadLetter::from_stream_message(message) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// The entry at `sequence`.
    pub async fn get(&self, sequence: u64) -> Result<DeadLetter, DeadLetterError> {
        let stream = self.stream().await?;
        let message = stream.get_raw_message(sequence).await.map_err(|err| {
            if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) {
                Error::new(DeadLetterErrorKind::NotFound(sequence))
            } else {
                Error::with_source(DeadLetterErrorKind::Stream, err)
            }
        })?;
        DeadLetter::from_stream_message(message)
    }

    /// Publishes the entry at `sequence` again on its original subject, with
    /// its original headers and payload, then deletes the entry.
    ///
    /// The event's id is kept, but it gets a new `Nats-Msg-Id`
    /// (`redrive:{dead-letter stream}:{sequence}`), so the original stream's
    /// duplicate detection does not drop it while a second redrive of the
    /// same entry within the duplicate window is stored once.
    ///
    /// Every group whose filter matches the subject gets the event again,
    /// not only the one that gave up on it: handlers should be idempotent
    /// (the unchanged event id is the key to deduplicate on).
    ///
    /// An `undeliverable` entry is redriven with the header lines that could
    /// be read ([`DeadLetter::headers`]), not its
    /// [original block](DeadLetter::original_header_block): lines that are
    /// not UTF-8 or not headers cannot be sent by this client, and would cut
    /// the consumers' connections again. When the block was readable, the
    /// two are the same headers. Read the entry with [`get`](Self::get)
    /// before redriving it if the unreadable lines matter: the entry is
    /// deleted after the redrive.
    pub async fn redrive(&self, sequence: u64) -> Result<Redriven, DeadLetterError> {
        let entry = self.get(sequence).await?;
        let mut headers = entry.headers.clone();
        headers.insert(
            "Nats-Msg-Id",
            format!("redrive:{}:{}", self.config.stream, sequence),
        );
        let ack = self
            .client
            .jetstream()
            .publish_with_headers(
                entry.original_subject.clone(),
                headers,
                entry.payload.clone(),
            )
            .await
            .map_err(|err| Error::with_source(DeadLetterErrorKind::Redrive, err))?
            .await
            .map_err(|err| Error::with_source(DeadLetterErrorKind::Redrive, err))?;
        self.delete(sequence).await?;
        Ok(Redriven {
            dead_letter_sequence: sequence,
            subject: entry.original_subject,
            stream: ack.stream,
            sequence: ack.sequence,
        })
    }

    /// Deletes the entry at `sequence`.
    pub async fn delete(&self, sequence: u64) -> Result<(), DeadLetterError> {
        let stream = self.stream().await?;
        match stream.delete_message(sequence).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::new(DeadLetterErrorKind::NotFound(sequence))),
            Err(err) => Err(Error::with_source(DeadLetterErrorKind::Stream, err)),
        }
    }

    async fn stream(&self) -> Result<stream::Stream<stream::Info>, DeadLetterError> {
        self.client
            .jetstream()
            .get_stream(&self.config.stream)
            .await
            .map_err(|err| {
                if matches!(
                    err.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) {
                    Error::with_source(DeadLetterErrorKind::NoStream, err)
                } else {
                    Error::with_source(DeadLetterErrorKind::Stream, err)
                }
            })
    }
}

/// Creates the dead-letter stream unless it exists.
pub(crate) async fn ensure_stream(
    client: &Client,
    config: &DeadLetterConfig,
) -> Result<(), DeadLetterError> {
    client
        .jetstream()
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            description: Some("jetevents: events no handler could handle".to_owned()),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|err| Error::with_source(DeadLetterErrorKind::Stream, err))
}

/// Everything known about a message being dead-lettered.
pub(crate) struct Failure<'a> {
    pub reason: DeadLetterReason,
    pub error: &'a str,
    pub subject: &'a str,
    pub stream: &'a str,
    pub stream_sequence: u64,
    pub consumer: &'a str,
    pub delivery_count: u64,
    pub failed_runs: Option<u32>,
}

/// The subject and headers of the dead-letter copy of a message.
pub(crate) fn dead_letter_message(
    config: &DeadLetterConfig,
    original_headers: Option<&HeaderMap>,
    failure: &Failure<'_>,
    now: DateTime<Utc>,
) -> (String, HeaderMap) {
    let mut headers = HeaderMap::new();
    if let Some(original) = original_headers {
        for (name, values) in original.iter() {
            let name_str: &str = name.as_ref();
            let is_nats = name_str
                .get(..5)
                .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"));
            let is_ours = OUR_HEADERS
                .iter()
                .any(|ours| ours.eq_ignore_ascii_case(name_str));
            if is_nats || is_ours {
                continue;
            }
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers.insert(REASON, failure.reason.as_str());
    headers.insert(ERROR, one_line(failure.error, MAX_ERROR_LEN));
    headers.insert(ORIGINAL_SUBJECT, failure.subject);
    headers.insert(ORIGINAL_STREAM, failure.stream);
    headers.insert(ORIGINAL_SEQUENCE, failure.stream_sequence.to_string());
    headers.insert(CONSUMER, failure.consumer);
    headers.insert(DELIVERIES, failure.delivery_count.to_string());
    if let Some(runs) = failure.failed_runs {
        headers.insert(FAILED_RUNS, runs.to_string());
    }
    headers.insert(TIME, now.to_rfc3339_opts(SecondsFormat::Millis, true));
    headers.insert(
        "Nats-Msg-Id",
        format!(
            "dl:{}:{}:{}",
            failure.stream, failure.stream_sequence, failure.consumer
        ),
    );
    let subject = format!(
        "{}.{}.{}",
        config.subject_prefix, failure.consumer, failure.subject
    );
    (subject, headers)
}

/// `text` on one line (control characters become spaces: header values cannot
/// hold line breaks), cut to at most `max` bytes on a character boundary.
fn one_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if line.len() + c.len_utf8() > max {
            break;
        }
        line.push(c);
    }
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn failure() -> Failure<'static> {
        Failure {
            reason: DeadLetterReason::Permanent,
            error: "bad\r\ninput",
            subject: "dev.booking.appointment.confirmed.v1.a-1",
            stream: "BOOKING",
            stream_sequence: 42,
            consumer: "billing",
            delivery_count: 3,
            failed_runs: Some(2),
        }
    }

    #[test]
    fn copy_keeps_event_headers_drops_nats_ones_and_adds_ours() {
        let mut original = HeaderMap::new();
        original.insert("ce-id", "e-1");
        original.insert("ce-type", "booking.appointment.confirmed.v1");
        original.insert("Nats-Msg-Id", "e-1");
        original.insert("Nats-Expected-Last-Subject-Sequence", "7");
        original.insert(REASON, "forged");
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let (subject, headers) = dead_letter_message(
            &DeadLetterConfig::default(),
            Some(&original),
            &failure(),
            now,
        );

        assert_eq!(
            subject,
            "deadletter.billing.dev.booking.appointment.confirmed.v1.a-1"
        );
        assert_eq!(headers.get("ce-id").unwrap().as_str(), "e-1");
        assert!(headers.get("Nats-Expected-Last-Subject-Sequence").is_none());
        assert_eq!(
            headers.get("Nats-Msg-Id").unwrap().as_str(),
            "dl:BOOKING:42:billing"
        );
        assert_eq!(headers.get(REASON).unwrap().as_str(), "permanent");
        assert_eq!(headers.get(ERROR).unwrap().as_str(), "bad  input");
        assert_eq!(headers.get(DELIVERIES).unwrap().as_str(), "3");
        assert_eq!(
            headers.get(TIME).unwrap().as_str(),
            "2026-01-02T03:04:05.678Z"
        );

        // Read back as a stored entry.
        assert!(subject.starts_with("deadletter."));
        let entry = DeadLetter::from_parts(9, &headers, Bytes::from_static(b"{}")).unwrap();
        assert_eq!(entry.reason, DeadLetterReason::Permanent);
        assert_eq!(entry.original_sequence, 42);
        assert_eq!(entry.original_stream, "BOOKING");
        assert_eq!(entry.consumer, "billing");
        assert_eq!(entry.delivery_count, 3);
        assert_eq!(entry.failed_runs, Some(2));
        assert_eq!(entry.time, Some(now));
        assert!(entry.headers.get(REASON).is_none());
        assert!(entry.headers.get("Nats-Msg-Id").is_none());
        assert_eq!(
            entry.headers.get("ce-type").unwrap().as_str(),
            "booking.appointment.confirmed.v1"
        );
    }

    #[test]
    fn error_text_is_cut_on_a_char_boundary() {
        let text = "é".repeat(600);
        let line = one_line(&text, MAX_ERROR_LEN);
        assert_eq!(line.len(), 1024);
        assert!(one_line("a\tb", 10) == "a b");
    }

    #[test]
    fn reasons_round_trip() {
        for reason in [
            DeadLetterReason::Permanent,
            DeadLetterReason::AttemptsExhausted,
            DeadLetterReason::Undecodable,
            DeadLetterReason::Unhandled,
            DeadLetterReason::Undeliverable,
            DeadLetterReason::Other("future".into()),
        ] {
            assert_eq!(reason.as_str().parse::<DeadLetterReason>().unwrap(), reason);
        }
    }

    #[test]
    fn undeliverable_entry_gives_back_the_original_header_block() {
        let block = b"NATS/1.0\r\nce-id: \xff\r\n\r\n";
        let mut carried = HeaderMap::new();
        carried.insert("ce-source", "/raw");
        // A forged copy of ours in the original is not kept.
        carried.insert(ORIGINAL_HEADERS, "Zm9yZ2Vk");
        let undeliverable = Failure {
            reason: DeadLetterReason::Undeliverable,
            ..failure()
        };
        let (_, mut headers) = dead_letter_message(
            &DeadLetterConfig::default(),
            Some(&carried),
            &undeliverable,
            Utc::now(),
        );
        assert!(headers.get(ORIGINAL_HEADERS).is_none());
        let mut encoded = Vec::new();
        crate::codec::base64::encode_into(block, &mut encoded);
        headers.insert(ORIGINAL_HEADERS, String::from_utf8(encoded).unwrap());
        let entry = DeadLetter::from_parts(5, &headers, Bytes::new()).unwrap();
        assert_eq!(entry.reason, DeadLetterReason::Undeliverable);
        assert_eq!(entry.original_header_block.as_deref(), Some(&block[..]));
        assert!(entry.headers.get(ORIGINAL_HEADERS).is_none());
        assert_eq!(entry.headers.get("ce-source").unwrap().as_str(), "/raw");

        let plain = DeadLetter::from_parts(
            6,
            &dead_letter_message(&DeadLetterConfig::default(), None, &failure(), Utc::now()).1,
            Bytes::new(),
        )
        .unwrap();
        assert_eq!(plain.original_header_block, None);
    }

    #[test]
    fn entry_without_our_headers_is_rejected() {
        let err = DeadLetter::from_parts(3, &HeaderMap::new(), Bytes::new()).unwrap_err();
        assert_eq!(err.kind(), &DeadLetterErrorKind::NotADeadLetter(3));
    }
}
