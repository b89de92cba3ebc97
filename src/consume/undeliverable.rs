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
//! stored message through the JSON `STREAM.MSG.GET` API (its reply is a
//! plain JSON message, so the original header block never reaches the
//! client's header parser) and copies it to the dead-letter stream with
//! reason `undeliverable`.
//!
//! Advisories are core NATS messages: one sent while no instance of the
//! group is connected is lost, and so is that event's dead letter. Every
//! instance of the group gets each advisory; the copy's `Nats-Msg-Id`
//! (`dl:{stream}:{sequence}:{consumer}`, the runner's too) stores it once.

use std::time::Duration;

use async_nats::header::HeaderName;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::client::{Client, Operation};
use crate::codec::base64;

use super::dead_letter::{self, DeadLetterConfig, DeadLetterReason, Failure};
use super::metrics::metric_attributes;
use super::settle_report::{SettleOperation, SettleReporter};

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
    Watch {
        task: tokio::spawn(watcher.run()),
    }
}

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}`
/// (schema `io.nats.jetstream.advisory.v1.max_deliver`), the fields we use.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The reply of `$JS.API.STREAM.MSG.GET.{stream}`.
#[derive(Debug, Deserialize)]
struct MsgGet {
    message: StoredMessage,
}

#[derive(Debug, Deserialize)]
struct StoredMessage {
    subject: String,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// Why handling one advisory stopped short of a dead letter.
enum Skip {
    /// The message is gone from the stream (limits, age, deleted).
    Deleted,
    /// Anything else, with the reason.
    Failed(String),
}

struct Watcher {
    client: Client,
    stream: String,
    group: String,
    dead_letter: DeadLetterConfig,
}

impl Watcher {
    async fn run(self) {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.stream, self.group
        );
        // Before subscribing, so a refusal cannot slip past.
        let mut violations = self.client.permission_violations();
        let Some(nats) = self.client.nats() else {
            return;
        };
        let mut advisories = match nats.subscribe(subject.clone()).await {
            Ok(subscription) => subscription,
            Err(err) => {
                tracing::warn!(
                    consumer = %self.group,
                    stream = %self.stream,
                    error = %err,
                    "cannot watch max-deliveries advisories; events the client cannot receive \
                     will not be dead-lettered"
                );
                return;
            }
        };
        let mut watching_violations = true;
        loop {
            tokio::select! {
                advisory = advisories.next() => match advisory {
                    Some(advisory) => self.on_advisory(&advisory.payload).await,
                    // Only a closed client ends the subscription.
                    None => return,
                },
                violation = violations.recv(), if watching_violations => match violation {
                    Ok(violation)
                        if violation.operation == Operation::Subscribe
                            && violation.subject == subject =>
                    {
                        tracing::warn!(
                            consumer = %self.group,
                            stream = %self.stream,
                            subject = %subject,
                            "not allowed to subscribe to max-deliveries advisories; events the \
                             client cannot receive will not be dead-lettered"
                        );
                        // Unsubscribing stops the client from asking again
                        // (and being refused again) on every reconnect.
                        if let Err(err) = advisories.unsubscribe().await {
                            tracing::debug!(error = %err, "unsubscribing the advisories failed");
                        }
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => watching_violations = false,
                },
            }
        }
    }

    async fn on_advisory(&self, payload: &[u8]) {
        let advisory: MaxDeliveries = match serde_json::from_slice(payload) {
            Ok(advisory) => advisory,
            Err(err) => {
                tracing::warn!(consumer = %self.group, error = %err, "unreadable max-deliveries advisory");
                return;
            }
        };
        let sequence = advisory.stream_seq;
        match self.dead_letter(&advisory).await {
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

    async fn dead_letter(&self, advisory: &MaxDeliveries) -> Result<(), Skip> {
        let sequence = advisory.stream_seq;
        let stored = self.fetch(sequence).await?;
        let block = match &stored.hdrs {
            Some(encoded) => Some(
                base64::decode(encoded)
                    .ok_or_else(|| Skip::Failed("stored headers are not base64".to_owned()))?,
            ),
            None => None,
        };
        let payload = match &stored.data {
            Some(encoded) => Bytes::from(
                base64::decode(encoded)
                    .ok_or_else(|| Skip::Failed("stored payload is not base64".to_owned()))?,
            ),
            None => Bytes::new(),
        };
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
            subject: &stored.subject,
            stream: &self.stream,
            stream_sequence: sequence,
            consumer: &self.group,
            delivery_count: advisory.deliveries,
            failed_runs: None,
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

    /// The stored message at `sequence`, through the JSON API.
    async fn fetch(&self, sequence: u64) -> Result<StoredMessage, Skip> {
        let subject = format!("STREAM.MSG.GET.{}", self.stream);
        let request = serde_json::json!({ "seq": sequence });
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(FIRST_RETRY_DELAY * 2u32.pow(attempt - 1)).await;
            }
            let Some(jetstream) = self.client.jetstream() else {
                return Err(Skip::Failed("no NATS connection".to_owned()));
            };
            let response: Result<Response<MsgGet>, _> =
                jetstream.request(subject.clone(), &request).await;
            match response {
                Ok(Response::Ok(found)) => return Ok(found.message),
                Ok(Response::Err { error })
                    if error.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    return Err(Skip::Deleted)
                }
                Ok(Response::Err { error }) => last = error.to_string(),
                Err(err) => last = err.to_string(),
            }
        }
        Err(Skip::Failed(format!(
            "reading the stored message failed: {last}"
        )))
    }

    /// Publishes the copy; true when the stream already had it.
    async fn store(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<bool, Skip> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(FIRST_RETRY_DELAY * 2u32.pow(attempt - 1)).await;
            }
            // Same message id on every attempt: a retry after a lost ack is
            // stored once.
            let Some(jetstream) = self.client.jetstream() else {
                return Err(Skip::Failed("no NATS connection".to_owned()));
            };
            let published = jetstream
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await;
            let ack = match published {
                Ok(ack) => ack.await,
                Err(err) => {
                    last = err.to_string();
                    continue;
                }
            };
            match ack {
                Ok(ack) => return Ok(ack.duplicate),
                Err(err) => last = err.to_string(),
            }
        }
        Err(Skip::Failed(format!(
            "storing the dead letter failed: {last}"
        )))
    }
}

/// Approximate wire size of `headers`.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|value| name.len() + value.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum()
}

/// What could be read from a raw header block.
#[derive(Debug, Default)]
struct ParsedHeaderBlock {
    /// Every line that is UTF-8 and a valid `name: value` header, read the
    /// way async-nats reads them (value trimmed, continuation lines joined).
    headers: HeaderMap,
    /// What was left out, for the dead letter's error text.
    problems: Vec<String>,
}

/// Reads a NATS header block (`NATS/1.0[ status]\r\n` then header lines)
/// line by line, keeping what can be carried as headers and noting the
/// rest. A line is dropped when it is not UTF-8, has no `:`, has an invalid
/// header name, or has control characters in its value (they would corrupt
/// the copy's own header block).
fn parse_header_block(block: &[u8]) -> ParsedHeaderBlock {
    let mut parsed = ParsedHeaderBlock::default();
    let mut lines = block
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .enumerate();
    match lines.next() {
        Some((_, version)) if version.starts_with(b"NATS/1.0") => {}
        _ => parsed.problems.push("no NATS/1.0 version line".to_owned()),
    }
    // The header being read, until a line that does not continue it.
    let mut current: Option<(HeaderName, String)> = None;
    // Whether continuation lines belong to a header that was dropped.
    let mut dropping = false;
    for (index, line) in lines {
        let number = index + 1;
        if line.is_empty() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            parsed.problems.push(format!("line {number} is not UTF-8"));
            if line.first().is_some_and(u8::is_ascii_whitespace) {
                // Part of the header being read: it cannot be carried whole.
                current = None;
            } else {
                flush(&mut parsed.headers, current.take());
            }
            dropping = true;
            continue;
        };
        if line.starts_with(char::is_whitespace) {
            if dropping {
                continue;
            }
            if let Some((_, value)) = current.as_mut() {
                if line.chars().any(|c| c.is_control() && c != '\t') {
                    parsed
                        .problems
                        .push(format!("line {number} has control characters"));
                    current = None;
                    dropping = true;
                } else {
                    value.push_str(line);
                }
                continue;
            }
        }
        flush(&mut parsed.headers, current.take());
        dropping = true;
        let Some((name, value)) = line.split_once(':') else {
            parsed.problems.push(format!("line {number} has no ':'"));
            continue;
        };
        let Ok(name) = name.parse::<HeaderName>().map_err(drop).and_then(|name| {
            // async-nats accepts an empty name, which no header can have.
            let text: &str = name.as_ref();
            if text.is_empty() {
                Err(())
            } else {
                Ok(name)
            }
        }) else {
            parsed
                .problems
                .push(format!("line {number} has an invalid header name"));
            continue;
        };
        if value.chars().any(|c| c.is_control() && c != '\t') {
            parsed
                .problems
                .push(format!("line {number} has control characters"));
            continue;
        }
        dropping = false;
        current = Some((name, value.trim_start().to_owned()));
    }
    flush(&mut parsed.headers, current.take());
    parsed
}

fn flush(headers: &mut HeaderMap, header: Option<(HeaderName, String)>) {
    if let Some((name, mut value)) = header {
        value.truncate(value.trim_end().len());
        headers.append(name, value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|value| value.as_str())
    }

    #[test]
    fn a_valid_block_is_read_like_async_nats_reads_it() {
        let parsed = parse_header_block(
            b"NATS/1.0\r\nce-id: e-1\r\nce-type:  a.b.c.v1  \r\nx-long: one\r\n two\r\nce-id: e-2\r\n\r\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(value(&parsed.headers, "ce-type"), Some("a.b.c.v1"));
        assert_eq!(value(&parsed.headers, "x-long"), Some("one two"));
        let ids: Vec<&str> = parsed
            .headers
            .get_all("ce-id")
            .map(|value| value.as_str())
            .collect();
        assert_eq!(ids, ["e-1", "e-2"]);
    }

    #[test]
    fn unreadable_lines_are_left_out_and_named() {
        let parsed = parse_header_block(
            b"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: \xff\xfe\xc0\xaf\r\n continued\r\nno colon here\r\nbad name: x\r\nce-source: /raw\r\nce-note: a\x07b\r\n\r\n",
        );
        assert_eq!(value(&parsed.headers, "ce-specversion"), Some("1.0"));
        assert_eq!(value(&parsed.headers, "ce-source"), Some("/raw"));
        assert!(parsed.headers.get("ce-id").is_none());
        assert!(parsed.headers.get("ce-note").is_none());
        assert_eq!(parsed.headers.iter().count(), 2);
        assert_eq!(
            parsed.problems,
            [
                "line 3 is not UTF-8",
                "line 5 has no ':'",
                "line 6 has an invalid header name",
                "line 8 has control characters",
            ]
        );
    }

    #[test]
    fn a_block_without_version_line_is_reported() {
        let parsed = parse_header_block(b"ce-id: x\r\n\r\n");
        assert_eq!(parsed.problems, ["no NATS/1.0 version line"]);
        assert!(parsed.headers.get("ce-id").is_none());

        let empty = parse_header_block(b"");
        assert_eq!(empty.problems, ["no NATS/1.0 version line"]);
        assert_eq!(empty.headers.iter().count(), 0);
    }

    #[test]
    fn the_advisory_and_the_stored_message_are_read() {
        let advisory: MaxDeliveries = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-01-01T00:00:00Z","stream":"S","consumer":"g","stream_seq":7,"deliveries":3}"#,
        )
        .unwrap();
        assert_eq!((advisory.stream_seq, advisory.deliveries), (7, 3));
        let stored: Response<MsgGet> = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"a.b","seq":7,"hdrs":"TkFUUy8xLjANCg0K","data":"e30=","time":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        let Response::Ok(stored) = stored else {
            panic!("not a message")
        };
        assert_eq!(stored.message.subject, "a.b");
        assert_eq!(stored.message.data.as_deref(), Some("e30="));
        let missing: Response<MsgGet> = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","error":{"code":404,"err_code":10037,"description":"no message found"}}"#,
        )
        .unwrap();
        assert!(matches!(
            missing,
            Response::Err { error } if error.error_code() == ErrorCode::NO_MESSAGE_FOUND
        ));
    }
}
