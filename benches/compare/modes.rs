//! Scenario 11 (opt-in): jetevents in binary content mode (the default)
//! against jetevents in structured mode, same events, same run. The table's
//! "jetevents" column is binary mode, its "raw async-nats" column
//! structured mode: the ratio is binary/structured. Each backlog is read
//! again by a raw async-nats consumer doing the same decode work by hand
//! (`ce-*` headers, or the JSON format): its binary/structured ratio is
//! the part of the difference no client code can remove (async-nats
//! parsing the header block).

use std::borrow::Cow;

use async_nats::HeaderMap;
use chrono::Utc;
use jetevents::client::Client;
use jetevents::codec::Encoding;
use serde::Deserialize;

use crate::common::{
    self, order, raw_decode, raw_traceparent, recreate_stream, stream_messages, AppointmentBooked,
    Raw, RawDecoded, Side,
};
use crate::consume::{consume_as_group, consume_raw_as_group, filters, RawDecode, Tally};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// A slot per mode: 0 binary, 1 structured (the sides of `order`).
fn slot(side: Side) -> usize {
    if side == Side::Jetevents {
        0
    } else {
        1
    }
}

fn mode_name(side: Side) -> &'static str {
    ["binary", "structured"][slot(side)]
}

/// The structured JSON format of the benchmark's events, the attributes
/// [`raw_decode`] reads.
#[derive(Deserialize)]
struct StructuredEvent<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(borrow)]
    time: Cow<'a, str>,
    datacontenttype: Option<String>,
    partitionkey: Option<String>,
    #[serde(borrow)]
    traceparent: Option<Cow<'a, str>>,
    data: AppointmentBooked,
}

/// [`raw_decode`]'s work on a structured-mode message.
fn raw_decode_structured(_headers: Option<&HeaderMap>, payload: &[u8]) -> RawDecoded {
    let event: StructuredEvent<'_> = serde_json::from_slice(payload).expect("structured event");
    assert_eq!(event.specversion, "1.0");
    assert_eq!(
        event.event_type,
        <AppointmentBooked as jetevents::Event>::TYPE
    );
    RawDecoded {
        trace: event.traceparent.as_deref().and_then(raw_traceparent),
        time: chrono::DateTime::parse_from_rfc3339(&event.time)
            .expect("time")
            .with_timezone(&Utc),
        id: event.id,
        source: event.source,
        event_type: event.event_type,
        data_content_type: event.datacontenttype,
        partition_key: event.partitionkey,
        event: event.data,
    }
}

/// Whether the raw side runs (`JE_BENCH_SIDES` may leave it out, as when
/// profiling jetevents alone).
fn raw_side_runs() -> bool {
    let only = std::env::var("JE_BENCH_SIDES").unwrap_or_default();
    only.is_empty() || only.split(',').any(|side| side.trim() == Side::Raw.name())
}

pub async fn modes(settings: &Settings, binary: &Client, raw: &Raw, url: &str) -> Scenario {
    let mut config = common::jetevents_config(url, common::ENV);
    config.encoding = Encoding::Structured;
    let structured = Client::connect(config)
        .await
        .expect("jetevents connect (structured)");
    let clients = [binary, &structured];
    let events = common::events(0, settings.events);
    let filters = filters(binary);
    let mut publish_rates = [Vec::new(), Vec::new()];
    let mut publish_cpu = [Vec::new(), Vec::new()];
    let mut publish_server_cpu = [Vec::new(), Vec::new()];
    let mut consume_rates = [Vec::new(), Vec::new()];
    let mut consume_cpu = [Vec::new(), Vec::new()];
    let mut raw_consume_rates = [Vec::new(), Vec::new()];
    let mut raw_consume_cpu = [Vec::new(), Vec::new()];
    let raw_decoders: [RawDecode; 2] = [raw_decode, raw_decode_structured];
    for round in 0..settings.rounds {
        for side in order(round) {
            let slot = slot(side);
            let publisher = clients[slot].publisher();
            recreate_stream(&raw.js).await;
            let cpu_start = common::process_cpu();
            let server_cpu_start = common::server_cpu();
            let syscalls_start = common::syscalls();
            let start = std::time::Instant::now();
            let results = publisher.publish_many(&events, settings.window).await;
            let elapsed = start.elapsed();
            assert!(results.iter().all(Result::is_ok), "a publish failed");
            publish_rates[slot].push(events.len() as f64 / elapsed.as_secs_f64());
            publish_cpu[slot].push(common::cpu_us_per_event(cpu_start, events.len()));
            publish_server_cpu[slot].push(common::server_cpu_us_per_event(
                server_cpu_start,
                events.len(),
            ));
            let syscalls = common::syscalls_per_event(syscalls_start, events.len());
            assert_eq!(stream_messages(&raw.js).await, events.len() as u64);

            // The backlog this mode just wrote, consumed by the same
            // (mode-agnostic) typed consumer.
            let name = format!("bench-mode-{}-{}", mode_name(side), round + 1);
            let tally = Tally::new(events.len());
            let cpu_start = common::process_cpu();
            let elapsed = consume_as_group(
                Side::Jetevents,
                std::slice::from_ref(clients[slot]),
                std::slice::from_ref(raw),
                &name,
                &filters,
                &tally,
                settings.concurrency,
            )
            .await;
            consume_rates[slot].push(events.len() as f64 / elapsed.as_secs_f64());
            consume_cpu[slot].push(common::cpu_us_per_event(cpu_start, events.len()));
            eprintln!(
                "  [11] round {} {:<10} publish {:>9.0} (CPU client {:.1} server {:.1} us/event, {syscalls}) consume {:>9.0} events/s (CPU {:.1} us/event)",
                round + 1,
                mode_name(side),
                publish_rates[slot].last().copied().unwrap_or_default(),
                publish_cpu[slot].last().copied().unwrap_or_default(),
                publish_server_cpu[slot].last().copied().unwrap_or_default(),
                consume_rates[slot].last().copied().unwrap_or_default(),
                consume_cpu[slot].last().copied().unwrap_or_default(),
            );

            // The same backlog read again by raw async-nats, same decode work.
            if raw_side_runs() {
                let name = format!("bench-mode-raw-{}-{}", mode_name(side), round + 1);
                let tally = Tally::new(events.len());
                let cpu_start = common::process_cpu();
                let elapsed = consume_raw_as_group(
                    std::slice::from_ref(raw),
                    &name,
                    &filters,
                    &tally,
                    raw_decoders[slot],
                )
                .await;
                raw_consume_rates[slot].push(events.len() as f64 / elapsed.as_secs_f64());
                raw_consume_cpu[slot].push(common::cpu_us_per_event(cpu_start, events.len()));
                eprintln!(
                    "  [11] round {} {:<10} raw async-nats consume {:>9.0} events/s (CPU {:.1} us/event)",
                    round + 1,
                    mode_name(side),
                    raw_consume_rates[slot].last().copied().unwrap_or_default(),
                    raw_consume_cpu[slot].last().copied().unwrap_or_default(),
                );
            }
        }
    }
    let mut scenario = Scenario::new(
        "11",
        format!(
            "binary (jetevents column) vs structured (raw column) mode, {} events, publish_many window {}, consume",
            settings.events, settings.window
        ),
    );
    scenario.push(
        Metric::throughput("events/s", &publish_rates[0], &publish_rates[1], 0.9)
            .named("publish_many throughput"),
    );
    scenario.push(Metric::cpu(&publish_cpu[0], &publish_cpu[1]).named("publish client CPU"));
    scenario.push(
        Metric::server_cpu(&publish_server_cpu[0], &publish_server_cpu[1])
            .named("publish server CPU"),
    );
    scenario.push(
        Metric::throughput("events/s", &consume_rates[0], &consume_rates[1], 0.9)
            .named("consume throughput"),
    );
    scenario.push(Metric::cpu(&consume_cpu[0], &consume_cpu[1]).named("consume client CPU"));
    if !raw_consume_rates[0].is_empty() {
        scenario.push(
            Metric::throughput(
                "events/s",
                &raw_consume_rates[0],
                &raw_consume_rates[1],
                0.9,
            )
            .named("raw async-nats consume throughput"),
        );
        scenario.push(
            Metric::cpu(&raw_consume_cpu[0], &raw_consume_cpu[1])
                .named("raw async-nats consume client CPU"),
        );
    }
    scenario
        .notes
        .push("binary mode in the jetevents column, structured mode in the raw column".to_owned());
    scenario.notes.push(
        "raw async-nats rows: the same backlogs consumed by raw async-nats with the same decode \
         work; their ratio is what async-nats' header parsing costs binary mode"
            .to_owned(),
    );
    scenario
}
