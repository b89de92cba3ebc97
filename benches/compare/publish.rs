//! Scenarios 1 and 2: pipelined publishing and awaited one-at-a-time publishing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use jetevents::client::Client;

use crate::common::{
    self, order, percentile, raw_message, recreate_stream, stream_messages, AppointmentBooked, Raw,
    Side,
};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// Scenario 1: `events` typed events published with up to `window` acks in
/// flight; every ack is awaited and checked.
pub async fn pipelined(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let events = common::events(0, settings.events);
    let publisher = je.publisher();
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    let mut server_cpu = [Vec::new(), Vec::new()];
    let mut samples: [Option<async_nats::jetstream::message::StreamMessage>; 2] = [None, None];
    for round in 0..settings.rounds {
        for side in order(round) {
            recreate_stream(&raw.js).await;
            let cpu_start = common::process_cpu();
            let server_cpu_start = common::server_cpu();
            let syscalls_start = common::syscalls();
            let start = Instant::now();
            match side {
                Side::Jetevents => {
                    let results = publisher.publish_many(&events, settings.window).await;
                    let elapsed = start.elapsed();
                    let failed = results.iter().filter(|r| r.is_err()).count();
                    assert_eq!(failed, 0, "jetevents: {failed} publishes failed");
                    rates[0].push(events.len() as f64 / elapsed.as_secs_f64());
                }
                Side::Raw => {
                    let acks = raw_publish_many(raw, &events, settings.window).await;
                    let elapsed = start.elapsed();
                    assert_eq!(acks, events.len());
                    rates[1].push(events.len() as f64 / elapsed.as_secs_f64());
                }
            }
            let slot = if side == Side::Jetevents { 0 } else { 1 };
            cpu[slot].push(common::cpu_us_per_event(cpu_start, events.len()));
            let syscalls = common::syscalls_per_event(syscalls_start, events.len());
            server_cpu[slot].push(common::server_cpu_us_per_event(
                server_cpu_start,
                events.len(),
            ));
            assert_eq!(stream_messages(&raw.js).await, events.len() as u64);
            if samples[slot].is_none() {
                let stream = raw.js.get_stream(common::STREAM).await.expect("stream");
                samples[slot] = Some(stream.get_raw_message(1).await.expect("first message"));
            }
            eprintln!(
                "  [1] round {} {:<9} {:>9.0} events/s, CPU client {:.1} server {:.1} us/event, {syscalls}",
                round + 1,
                side.name(),
                rates[slot].last().copied().unwrap_or_default(),
                cpu[slot].last().copied().unwrap_or_default(),
                server_cpu[slot].last().copied().unwrap_or_default(),
            );
        }
    }
    if let [Some(je_msg), Some(raw_msg)] = &samples {
        same_work_check(je_msg, raw_msg);
    }
    let mut scenario = Scenario::new(
        "1",
        format!(
            "pipelined publish, {} events, window {}",
            settings.events, settings.window
        ),
    );
    scenario.push(Metric::throughput("events/s", &rates[0], &rates[1], 0.95));
    scenario.push(Metric::cpu(&cpu[0], &cpu[1]));
    scenario.push(Metric::server_cpu(&server_cpu[0], &server_cpu[1]));
    scenario
}

/// The raw pipelined loop: build the message by hand, send it, await the
/// oldest ack once `window` are in flight.
pub async fn raw_publish_many(raw: &Raw, events: &[AppointmentBooked], window: usize) -> usize {
    publish_windowed(raw, events.iter().map(raw_message_with_headers), window).await
}

/// A function, not a closure: a closure's signature is not general over the
/// event's lifetime, and the future would not be `Send` for `JE_BENCH_SPAWN`.
fn raw_message_with_headers(event: &AppointmentBooked) -> (String, Option<HeaderMap>, Bytes) {
    let (subject, headers, payload) = raw_message(event);
    (subject, Some(headers), payload)
}

/// Sends `messages` with up to `window` acks in flight, awaiting the oldest
/// once the window is full; returns the acks received. Messages are built
/// as the iterator yields them: scenario 1's raw side builds each inside
/// the clock, scenario 12 hands in messages built before it.
pub async fn publish_windowed(
    raw: &Raw,
    messages: impl IntoIterator<Item = (String, Option<HeaderMap>, Bytes)>,
    window: usize,
) -> usize {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(window);
    // Kept, as jetevents keeps each result (and scenario 1's raw side always
    // did).
    let messages = messages.into_iter();
    let mut acks = Vec::with_capacity(messages.size_hint().0);
    for (subject, headers, payload) in messages {
        if in_flight.len() >= window {
            if let Some(ack) = in_flight.pop_front() {
                acks.push(ack.await.expect("raw ack"));
            }
        }
        let mut message = PublishMessage::build().payload(payload);
        if let Some(headers) = headers {
            message = message.headers(headers);
        }
        let ack = raw
            .js
            .send_publish(subject, message)
            .await
            .expect("raw send");
        in_flight.push_back(ack);
    }
    while let Some(ack) = in_flight.pop_front() {
        acks.push(ack.await.expect("raw ack"));
    }
    acks.len()
}

/// Both sides stored the same subject, header names and payload bytes for
/// the same event (ids and times differ by nature).
fn same_work_check(
    je: &async_nats::jetstream::message::StreamMessage,
    raw: &async_nats::jetstream::message::StreamMessage,
) {
    let names = |m: &async_nats::jetstream::message::StreamMessage| {
        let mut names: Vec<String> = m
            .headers
            .iter()
            .map(|(name, _)| name.to_string().to_ascii_lowercase())
            .collect();
        names.sort();
        names
    };
    assert_eq!(je.subject, raw.subject, "subjects differ");
    assert_eq!(names(je), names(raw), "header names differ");
    assert_eq!(je.payload, raw.payload, "payloads differ");
    for name in [
        "ce-source",
        "ce-type",
        "ce-datacontenttype",
        "ce-partitionkey",
        "ce-traceparent",
    ] {
        assert_eq!(
            je.headers.get(name).map(|v| v.as_str().to_owned()),
            raw.headers.get(name).map(|v| v.as_str().to_owned()),
            "{name} differs"
        );
    }
    eprintln!(
        "  same work: subject, payload ({} bytes) and {} headers match ({})",
        je.payload.len(),
        names(je).len(),
        names(je).join(", ")
    );
}

/// Scenario 2: one publish at a time, each awaited; latency per publish.
///
/// Latency is sensitive to whatever else the machine does, so within each
/// round the sides alternate in chunks of `JE_BENCH_LATENCY_CHUNK` (10)
/// publishes on the same stream: both see the same conditions. Chunks of
/// 10 spread a hiccup of the VM (a few milliseconds, dozens of publishes)
/// over both sides; with chunks of 250 it fell on one, and the p99 ratio
/// moved between 0.94 and 1.10 from run to run (0.99-1.06 with 10).
pub async fn one_at_a_time(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let events = common::events(0, settings.latency_events);
    let warmup = common::events(10_000_000, settings.latency_events.min(500));
    let chunk = crate::env("JE_BENCH_LATENCY_CHUNK", 10usize).max(1);
    let publisher = je.publisher();
    let mut latencies: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut busy = [Duration::ZERO; 2];
    let mut busy_cpu = [Duration::ZERO; 2];
    for round in 0..settings.rounds {
        recreate_stream(&raw.js).await;
        let sides = order(round);
        for side in &sides {
            for event in &warmup {
                match side {
                    Side::Jetevents => {
                        publisher.publish(event).await.expect("publish");
                    }
                    Side::Raw => common::raw_publish(raw, raw_message(event)).await,
                }
            }
        }
        for (index, events) in events.chunks(chunk).enumerate() {
            let sides = order(round + index);
            for side in sides {
                let slot = if side == Side::Jetevents { 0 } else { 1 };
                let start = Instant::now();
                let cpu_start = common::process_cpu();
                for event in events {
                    let t = Instant::now();
                    match side {
                        Side::Jetevents => {
                            publisher.publish(event).await.expect("publish");
                        }
                        Side::Raw => common::raw_publish(raw, raw_message(event)).await,
                    }
                    latencies[slot].push(t.elapsed());
                }
                busy_cpu[slot] += common::process_cpu() - cpu_start;
                busy[slot] += start.elapsed();
            }
        }
        assert_eq!(
            stream_messages(&raw.js).await,
            ((warmup.len() + events.len()) * sides.len()) as u64
        );
        eprintln!("  [2] round {} done", round + 1);
    }
    for samples in &mut latencies {
        samples.sort();
    }
    let rate = |slot: usize| latencies[slot].len() as f64 / busy[slot].as_secs_f64();
    let mut scenario = Scenario::new(
        "2",
        format!(
            "awaited one-at-a-time publish, {} events x {} rounds, sides alternating every {chunk}",
            settings.latency_events, settings.rounds
        ),
    );
    scenario.push(Metric::latency(
        "p50",
        percentile(&latencies[0], 50.0),
        percentile(&latencies[1], 50.0),
        1.10,
    ));
    scenario.push(Metric::latency(
        "p99",
        percentile(&latencies[0], 99.0),
        percentile(&latencies[1], 99.0),
        1.10,
    ));
    scenario.push(Metric::throughput(
        "publishes/s",
        &[rate(0)],
        &[rate(1)],
        0.0,
    ));
    let cpu = |slot: usize| busy_cpu[slot].as_secs_f64() * 1e6 / latencies[slot].len() as f64;
    scenario.push(Metric::cpu(&[cpu(0)], &[cpu(1)]));
    scenario
}
