//! The dead-letter copy of a message, and the stream it goes to.

use std::time::Duration;

use async_nats::jetstream::stream::{self, StorageType};
use async_nats::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::client::Client;
use crate::error::Error;

use super::{
    DeadLetterConfig, DeadLetterError, DeadLetterErrorKind, DeadLetterReason, CONSUMER, DELIVERIES,
    ERROR, FAILED_RUNS, HELD_BEHIND, MAX_ERROR_LEN, ORIGINAL_SEQUENCE, ORIGINAL_STREAM,
    ORIGINAL_SUBJECT, OUR_HEADERS, REASON, TIME,
};

/// The dead-letter stream's: a copy repeated within it is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Creates the dead-letter stream unless it exists.
pub(crate) async fn ensure_stream(
    client: &Client,
    config: &DeadLetterConfig,
) -> Result<(), DeadLetterError> {
    #[cfg(feature = "testing")]
    if let Some(memory) = client.memory() {
        if memory.stream_info(&config.stream).is_some() {
            return Ok(());
        }
        let mut spec = crate::testing::StreamConfig::new(
            config.stream.clone(),
            [format!("{}.>", config.subject_prefix)],
        );
        spec.duplicate_window = DUPLICATE_WINDOW;
        return memory
            .create_stream(spec)
            .map(|_| ())
            .map_err(|err| Error::with_source(DeadLetterErrorKind::Stream, err));
    }
    client
        .nats_transport("the dead-letter stream")
        .map_err(|err| Error::with_source(DeadLetterErrorKind::Stream, err))?
        .jetstream
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
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
    /// Events of the partition waiting behind it (partitioned groups only).
    pub held_behind: Option<u64>,
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
    if let Some(held) = failure.held_behind {
        headers.insert(HELD_BEHIND, held.to_string());
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
    use bytes::Bytes;

    use crate::consume::dead_letter::{DeadLetter, ORIGINAL_HEADERS};

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
            held_behind: None,
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
