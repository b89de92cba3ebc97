//! Listing, inspecting, redriving and deleting dead-lettered events.

use async_nats::jetstream::stream::{self, RawMessageErrorKind};

use crate::client::Client;
use crate::error::Error;

use super::copy::ensure_stream;
use super::{DeadLetter, DeadLetterConfig, DeadLetterError, DeadLetterErrorKind};

#[cfg(doc)]
use super::{DeadLetterReason, DEFAULT_STREAM};

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
            .jetstream()?
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

    /// The JetStream context: reading and changing entries needs NATS.
    fn jetstream(&self) -> Result<&async_nats::jetstream::Context, DeadLetterError> {
        self.client
            .nats_transport("the dead-letter API")
            .map(|nats| &nats.jetstream)
            .map_err(|err| Error::with_source(DeadLetterErrorKind::Stream, err))
    }

    async fn stream(&self) -> Result<stream::Stream<stream::Info>, DeadLetterError> {
        self.jetstream()?
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
