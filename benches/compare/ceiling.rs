//! Scenario 12 (opt-in, `JE_BENCH_SCENARIOS=12`): where the publish ceiling
//! is. The messages of scenario 1's raw side, sent by the cheapest clients
//! there are, to tell what the server can store from what a client costs:
//!
//! - (a) bare async-nats, every message built before the clock starts,
//!   per-message ack futures, window `JE_BENCH_WINDOW` and
//!   `JE_BENCH_CEILING_WINDOW` (1024);
//! - (b) core NATS publish without a reply subject (no acks at all), then
//!   waiting until the stream holds every message: the server's store rate;
//! - (c) as (b) in structured content mode (`Content-Type` and
//!   `Nats-Msg-Id` the only headers), and (d) with no headers at all: what
//!   the headers cost the server;
//! - jetevents' `publish_many`, for reference.
//!
//! `JE_BENCH_CEILING_ROWS` picks rows by key (`raw`, `jetevents`, `a256`,
//! `a1024`, `bare256`, `b`, `c`, `d`), for profiling one of them.
//!
//! Every row's "raw async-nats" column is scenario 1's raw side run in the
//! same round, so each ratio is the row against that baseline. "server CPU
//! utilisation" is server CPU seconds over wall seconds: about 1.0 means
//! the server's serial ingest path was busy all the time.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use jetevents::client::Client;
use serde_json::json;

use crate::common::{
    self, raw_message, recreate_stream, stream_messages, wait_until, AppointmentBooked, Raw,
};
use crate::publish::{publish_windowed, raw_publish_many};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// What a row's messages carry, all with the same subject and event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// Scenario 1's message: `Nats-Msg-Id` and the nine `ce-*` headers.
    Binary,
    /// The CloudEvents JSON format as payload; `Content-Type` and
    /// `Nats-Msg-Id` the only headers.
    Structured,
    /// The event's JSON only, no headers.
    Bare,
}

/// One way of sending the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    /// Scenario 1's raw side: each message built inside the clock.
    Baseline,
    /// jetevents `publish_many` with the scenario's window.
    Jetevents,
    /// Pre-built messages, acks awaited with this many in flight.
    Acked(Content, usize),
    /// Pre-built messages, core publish without reply, then waiting until
    /// the stream holds them all.
    Unacked(Content),
}

impl Row {
    /// The row's name in `JE_BENCH_CEILING_ROWS`.
    fn key(self) -> String {
        match self {
            Row::Baseline => "raw".to_owned(),
            Row::Jetevents => "jetevents".to_owned(),
            Row::Acked(Content::Binary, window) => format!("a{window}"),
            Row::Acked(_, window) => format!("bare{window}"),
            Row::Unacked(Content::Binary) => "b".to_owned(),
            Row::Unacked(Content::Structured) => "c".to_owned(),
            Row::Unacked(Content::Bare) => "d".to_owned(),
        }
    }

    fn label(self) -> String {
        let content = |content: Content| match content {
            Content::Binary => "binary headers",
            Content::Structured => "structured (2 headers)",
            Content::Bare => "no headers",
        };
        match self {
            Row::Baseline => "raw (scenario 1)".to_owned(),
            Row::Jetevents => "jetevents publish_many".to_owned(),
            Row::Acked(Content::Binary, window) => {
                format!("(a) pre-encoded async-nats, acked, window {window}")
            }
            Row::Acked(content_of, window) => {
                format!(
                    "pre-encoded async-nats, {}, acked, window {window}",
                    content(content_of)
                )
            }
            Row::Unacked(Content::Binary) => "(b) core publish, no acks".to_owned(),
            Row::Unacked(Content::Structured) => {
                format!(
                    "(c) core publish, no acks, {}",
                    content(Content::Structured)
                )
            }
            Row::Unacked(Content::Bare) => {
                format!("(d) core publish, no acks, {}", content(Content::Bare))
            }
        }
    }
}

/// Each run's measurements, one list per row.
#[derive(Default)]
struct Samples {
    rates: Vec<f64>,
    client_cpu: Vec<f64>,
    server_cpu: Vec<f64>,
    utilisation: Vec<f64>,
}

/// Messages stored but not yet acked or counted that an unacked publisher
/// may run ahead by. The server drops messages past its stream ingest queue
/// (`max_buffered_msgs`, 100,000 by default), so (b)-(d) stay below it.
const MAX_UNSTORED: u64 = 50_000;
/// How often an unacked publisher checks how far ahead it is.
const CHECK_EVERY: u64 = 5_000;
/// How long the stream may take to store what was sent.
const STORE_DEADLINE: Duration = Duration::from_secs(120);

pub async fn ceiling(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let events = common::events(0, settings.events);
    let large_window = crate::env("JE_BENCH_CEILING_WINDOW", 1024usize);
    let rows = [
        Row::Baseline,
        Row::Jetevents,
        Row::Acked(Content::Binary, settings.window),
        Row::Acked(Content::Binary, large_window),
        Row::Acked(Content::Bare, settings.window),
        Row::Unacked(Content::Binary),
        Row::Unacked(Content::Structured),
        Row::Unacked(Content::Bare),
    ];
    // `JE_BENCH_CEILING_ROWS=b,d` runs those rows only, for profiling (as
    // `JE_BENCH_SIDES` does for the other scenarios).
    let only = std::env::var("JE_BENCH_CEILING_ROWS").unwrap_or_default();
    let rows: Vec<Row> = rows
        .into_iter()
        .filter(|row| only.is_empty() || only.split(',').any(|key| key.trim() == row.key()))
        .collect();
    let mut samples: Vec<Samples> = rows.iter().map(|_| Samples::default()).collect();
    for round in 0..settings.rounds {
        // A different row first in every round: none always meets a cold
        // server or the machine's slow stretches.
        for offset in 0..rows.len() {
            let index = (round + offset) % rows.len();
            let row = rows[index];
            recreate_stream(&raw.js).await;
            let messages = match row {
                Row::Acked(content, _) | Row::Unacked(content) => prepare(&events, content),
                Row::Baseline | Row::Jetevents => Vec::new(),
            };
            let cpu_start = common::process_cpu();
            let server_cpu_start = common::server_cpu();
            let syscalls_start = common::syscalls();
            let start = Instant::now();
            match row {
                Row::Baseline => {
                    let acks = raw_publish_many(raw, &events, settings.window).await;
                    assert_eq!(acks, events.len());
                }
                Row::Jetevents => {
                    let results = je.publisher().publish_many(&events, settings.window).await;
                    assert!(results.iter().all(Result::is_ok), "a publish failed");
                }
                Row::Acked(_, window) => {
                    let acks = publish_windowed(raw, messages, window).await;
                    assert_eq!(acks, events.len());
                }
                Row::Unacked(_) => publish_unacked(raw, messages).await,
            }
            let elapsed = start.elapsed().as_secs_f64();
            let server_seconds = (common::server_cpu() - server_cpu_start).as_secs_f64();
            let sample = &mut samples[index];
            sample.rates.push(events.len() as f64 / elapsed);
            sample
                .client_cpu
                .push(common::cpu_us_per_event(cpu_start, events.len()));
            sample
                .server_cpu
                .push(server_seconds * 1e6 / events.len() as f64);
            sample.utilisation.push(server_seconds / elapsed);
            let syscalls = common::syscalls_per_event(syscalls_start, events.len());
            assert_eq!(stream_messages(&raw.js).await, events.len() as u64);
            eprintln!(
                "  [12] round {} {:<52} {:>9.0} events/s, CPU client {:.1} server {:.1} us/event, server {:.2} cores, {syscalls}",
                round + 1,
                row.label(),
                sample.rates.last().copied().unwrap_or_default(),
                sample.client_cpu.last().copied().unwrap_or_default(),
                sample.server_cpu.last().copied().unwrap_or_default(),
                sample.utilisation.last().copied().unwrap_or_default(),
            );
        }
    }
    let mut scenario = Scenario::new(
        "12",
        format!(
            "publish ceiling, {} events (raw column: scenario 1's raw side, window {}, same round)",
            settings.events, settings.window
        ),
    );
    let no_samples = Samples::default();
    let baseline = rows
        .iter()
        .position(|row| *row == Row::Baseline)
        .map_or(&no_samples, |index| &samples[index]);
    for (row, sample) in rows.iter().zip(&samples) {
        let label = row.label();
        scenario.push(
            Metric::throughput("events/s", &sample.rates, &baseline.rates, 0.0)
                .named(&format!("{label}: throughput")),
        );
        scenario.push(
            Metric::cpu(&sample.client_cpu, &baseline.client_cpu)
                .named(&format!("{label}: client CPU")),
        );
        scenario.push(
            Metric::server_cpu(&sample.server_cpu, &baseline.server_cpu)
                .named(&format!("{label}: server CPU")),
        );
        scenario.push(
            Metric::server_utilisation(&sample.utilisation, &baseline.utilisation)
                .named(&format!("{label}: server CPU utilisation")),
        );
    }
    scenario.notes.push(
        "each row's raw column is scenario 1's raw side in the same round; (b)-(d) include the wait until the stream holds every message".to_owned(),
    );
    scenario.extra = json!({
        "large_window": large_window,
        "max_unstored": MAX_UNSTORED,
        "rows": rows.iter().map(|row| row.label()).collect::<Vec<_>>(),
    });
    scenario
}

/// Every event's message with `content`, built before the clock starts.
fn prepare(
    events: &[AppointmentBooked],
    content: Content,
) -> Vec<(String, Option<HeaderMap>, Bytes)> {
    events
        .iter()
        .map(|event| {
            let (subject, headers, payload) = raw_message(event);
            match content {
                Content::Binary => (subject, Some(headers), payload),
                Content::Structured => {
                    let (headers, payload) = structured(&headers, event);
                    (subject, Some(headers), payload)
                }
                Content::Bare => (subject, None, payload),
            }
        })
        .collect()
}

/// The structured-mode message of the same event: every attribute of the
/// binary headers in the JSON event format, the data inline.
fn structured(binary: &HeaderMap, event: &AppointmentBooked) -> (HeaderMap, Bytes) {
    let attribute = |name: &str| binary.get(name).map(|value| value.as_str().to_owned());
    let id = attribute("ce-id").expect("ce-id");
    let document = json!({
        "specversion": "1.0",
        "id": id,
        "source": attribute("ce-source"),
        "type": attribute("ce-type"),
        "time": attribute("ce-time"),
        "datacontenttype": "application/json",
        "partitionkey": attribute("ce-partitionkey"),
        "traceparent": attribute("ce-traceparent"),
        "data": event,
    });
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers.insert(
        "Content-Type",
        jetevents::codec::APPLICATION_CLOUDEVENTS_JSON,
    );
    let payload = serde_json::to_vec(&document).expect("serialize");
    (headers, Bytes::from(payload))
}

/// Core NATS publishes without a reply subject, so the server sends no ack;
/// then waits until the stream holds them all. Without back-pressure the
/// publisher could outrun the store past the server's ingest queue, where
/// it drops: every [`CHECK_EVERY`] messages it waits while more than
/// [`MAX_UNSTORED`] are not stored yet.
async fn publish_unacked(raw: &Raw, messages: Vec<(String, Option<HeaderMap>, Bytes)>) {
    let client = raw.js.client();
    let total = messages.len() as u64;
    let mut sent = 0u64;
    for (subject, headers, payload) in messages {
        match headers {
            Some(headers) => client.publish_with_headers(subject, headers, payload).await,
            None => client.publish(subject, payload).await,
        }
        .expect("core publish");
        sent += 1;
        if sent.is_multiple_of(CHECK_EVERY) {
            let caught_up = wait_until(STORE_DEADLINE, || async {
                sent.saturating_sub(stream_messages(&raw.js).await) <= MAX_UNSTORED
            })
            .await;
            assert!(caught_up, "the stream stopped storing ({sent} sent)");
        }
    }
    client.flush().await.expect("flush");
    let stored = wait_until(STORE_DEADLINE, || async {
        stream_messages(&raw.js).await >= total
    })
    .await;
    assert!(
        stored,
        "the stream holds {} of {total} messages: did the server drop some (stream ingest queue)?",
        stream_messages(&raw.js).await
    );
}
