//! Dead-lettering what the runner never saw: events the server gave up on at
//! the consumer's `max_deliver`.
//!
//! async-nats drops the whole connection when a delivered message's header
//! block is not UTF-8, has a line without `:` or an invalid header name, so
//! the runner cannot dead-letter or even Term such a message: it comes back
//! until the server stops at `max_deliver`, and the server then only says so
//! in a `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}`
//! advisory. The same happens to an event whose handler takes its process
//! down on every attempt. This watcher listens to that advisory, reads the
//! stored message and copies it to the dead-letter stream with reason
//! `undeliverable`. Where the advisory and the stored message come from is
//! the transport's ([`nats`]: the advisory subject and the JSON
//! `STREAM.MSG.GET` API; [`memory`]: the test kit's engine); the copy and
//! its headers are made here for both.
//!
//! Advisories are core NATS messages: one sent while no instance of the
//! group is connected is lost, and so is that event's dead letter. Every
//! instance of the group gets each advisory; the copy's `Nats-Msg-Id`
//! (`dl:{stream}:{sequence}:{consumer}`, the runner's too) stores it once.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::codec::base64;

use super::dead_letter::{self, DeadLetterConfig, DeadLetterReason, Failure};
use super::metrics::metric_attributes;
use super::settle_report::{SettleOperation, SettleReporter};

mod header_block;
#[cfg(feature = "testing")]
mod memory;
mod nats;

use header_block::{header_bytes, parse_header_block};

/// Attempts at reading the stored message or storing its copy: the advisory
/// is not sent again, so a passing timeout must not lose the dead letter.
const ATTEMPTS: u32 = 5;
/// Pause before the second attempt; doubled for each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Above this many bytes of carried headers plus the encoded block, the copy
/// leaves the block out: JetStream refuses messages with more than 64 KiB of
/// headers, and ours (error text included) take up to about 2 KiB.
const MAX_COPY_HEADER_BYTES: usize = 48 * 1024;

/// The running watcher of one consumer runner; stops it when dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the max-deliveries advisories of `group` on `stream` and
/// dead-letters the events they name, until the returned [`Watch`] is
/// dropped. Never fails: if the advisory cannot be subscribed to (the
/// user's permissions), it warns once and the consumer runs without it.
pub(crate) fn watch(
    client: &Client,
    stream: &str,
    group: &str,
    dead_letter: &DeadLetterConfig,
) -> Watch {
    let watcher = Watcher {
        client: client.clone(),
        stream: stream.to_owned(),
        group: group.to_owned(),
        dead_letter: dead_letter.clone(),
    };
    #[cfg(feature = "testing")]
    if let Some(memory) = client.memory() {
        let advisories = memory.advisories();
        return Watch {
            task: tokio::spawn(memory::run(watcher, memory.clone(), advisories)),
        };
    }
    Watch {
        task: tokio::spawn(nats::run(watcher)),
    }
}

/// What a max-deliveries advisory says, whichever transport sent it.
#[derive(Debug)]
struct MaxDeliveries {
    stream_sequence: u64,
    deliveries: u64,
}

/// The stored message an advisory names, as the server stored it.
#[derive(Debug)]
struct Stored {
    subject: String,
    /// The raw header block (`NATS/1.0` line included), if it had headers.
    header_block: Option<Vec<u8>>,
    payload: Bytes,
}

/// Why handling one advisory stopped short of a dead letter.
enum Skip {
    /// The message is gone from the stream (limits, age, deleted).
    Deleted,
    /// Anything else, with the reason.
    Failed(String),
}

/// The pause before attempt `attempt` (counted from 0) of a read or a store.
fn retry_delay(attempt: u32) -> Duration {
    FIRST_RETRY_DELAY * 2u32.pow(attempt.saturating_sub(1))
}

struct Watcher {
    client: Client,
    stream: String,
    group: String,
    dead_letter: DeadLetterConfig,
}

impl Watcher {
    /// Dead-letters the message an advisory names, or says why not.
    async fn on_max_deliveries(&self, advisory: &MaxDeliveries, stored: Result<Stored, Skip>) {
        let sequence = advisory.stream_sequence;
        match self.dead_letter(advisory, stored).await {
            Ok(()) => {}
            Err(Skip::Deleted) => tracing::warn!(
                consumer = %self.group,
                stream = %self.stream,
                sequence,
                "event reached max deliveries but is no longer in the stream; nothing to dead-letter"
            ),
            Err(Skip::Failed(error)) => SettleReporter::new(&self.client, &self.group).failed(
                sequence,
                SettleOperation::DeadLetter,
                &error,
                "the event reached max deliveries and is not in the dead-letter stream",
            ),
        }
    }

    async fn dead_letter(
        &self,
        advisory: &MaxDeliveries,
        stored: Result<Stored, Skip>,
    ) -> Result<(), Skip> {
        let sequence = advisory.stream_sequence;
        let Stored {
            subject,
            header_block: block,
            payload,
        } = stored?;
        let parsed = block.as_deref().map(parse_header_block);

        let mut error = format!(
            "delivered {} times without being settled (max deliveries reached): the client could \
             not receive it, or every attempt ended without a settle",
            advisory.deliveries
        );
        if let Some(parsed) = &parsed {
            if !parsed.problems.is_empty() {
                error.push_str("; header block: ");
                error.push_str(&parsed.problems.join(", "));
            }
        }
        let carried = parsed
            .as_ref()
            .map_or(0, |parsed| header_bytes(&parsed.headers));
        let original_block = block
            .as_ref()
            .map(|block| {
                let mut encoded = Vec::new();
                base64::encode_into(block, &mut encoded);
                // The alphabet is ASCII.
                String::from_utf8_lossy(&encoded).into_owned()
            })
            .filter(|encoded| {
                // Too big to keep next to the lines already carried.
                let fits = carried + encoded.len() <= MAX_COPY_HEADER_BYTES;
                if !fits {
                    error.push_str("; original header block too large to keep");
                }
                fits
            });
        let failure = Failure {
            reason: DeadLetterReason::Undeliverable,
            error: &error,
            subject: &subject,
            stream: &self.stream,
            stream_sequence: sequence,
            consumer: &self.group,
            delivery_count: advisory.deliveries,
            failed_runs: None,
            held_behind: None,
        };
        let (subject, mut headers) = dead_letter::dead_letter_message(
            &self.dead_letter,
            parsed.as_ref().map(|parsed| &parsed.headers),
            &failure,
            Utc::now(),
        );
        if let Some(encoded) = original_block {
            headers.insert(dead_letter::ORIGINAL_HEADERS, encoded);
        }

        let duplicate = self.store(subject, headers, payload.clone()).await?;
        if duplicate {
            // Another instance of the group (or the runner) was first.
            tracing::debug!(consumer = %self.group, stream = %self.stream, sequence, "already dead-lettered");
            return Ok(());
        }
        let event_type = parsed
            .as_ref()
            .and_then(|parsed| crate::codec::decode(Some(&parsed.headers), &payload).ok())
            .map(|envelope| envelope.event_type)
            .unwrap_or_else(|| "undecodable".to_owned());
        self.client.metrics().dead_lettered.add(
            1,
            &metric_attributes(&self.group, &event_type, Some(failure.reason.as_str())),
        );
        tracing::warn!(
            consumer = %self.group,
            stream = %self.stream,
            sequence,
            reason = %failure.reason,
            error = %error,
            "event dead-lettered"
        );
        Ok(())
    }

    /// Stores the copy; true when the stream already had it.
    async fn store(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<bool, Skip> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(retry_delay(attempt)).await;
            }
            // Same message id on every attempt: a retry after a lost ack is
            // stored once.
            let sent = self
                .client
                .transport()
                .send(&subject, headers.clone(), payload.clone())
                .await;
            let stored = match sent {
                Ok(pending) => pending.await,
                Err(err) => Err(err),
            };
            match stored {
                Ok(stored) => return Ok(stored.duplicate),
                Err(err) => last = err.to_string(),
            }
        }
        Err(Skip::Failed(format!(
            "storing the dead letter failed: {last}"
        )))
    }
}
