//! Scenario 6: `Publisher::ingest` through fast-ingest batches against raw
//! async-nats windowed publishing of the same messages (scenario 1's raw
//! side), on a stream that allows batch publish.

use std::time::Instant;

use jetevents::client::Client;
use jetevents::publish::IngestPath;

use crate::common::{self, order, recreate_batch_stream, stream_messages, Raw, Side};
use crate::publish::raw_publish_many;
use crate::report::{Metric, Scenario};
use crate::Settings;

pub async fn fast_ingest(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let events = common::events(0, settings.events);
    let publisher = je.publisher();
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    let mut server_cpu = [Vec::new(), Vec::new()];
    for round in 0..settings.rounds {
        for side in order(round) {
            recreate_batch_stream(&raw.js).await;
            let cpu_start = common::process_cpu();
            let server_cpu_start = common::server_cpu();
            let syscalls_start = common::syscalls();
            let start = Instant::now();
            let slot = match side {
                Side::Jetevents => {
                    let report = publisher.ingest(&events).await;
                    let elapsed = start.elapsed();
                    assert_eq!(report.path, IngestPath::FastBatch, "not the fast path");
                    let failed = report.results.iter().filter(|r| r.is_err()).count();
                    assert_eq!(failed, 0, "jetevents: {failed} events not ingested");
                    rates[0].push(events.len() as f64 / elapsed.as_secs_f64());
                    0
                }
                Side::Raw => {
                    let acks = raw_publish_many(raw, &events, settings.window).await;
                    let elapsed = start.elapsed();
                    assert_eq!(acks, events.len());
                    rates[1].push(events.len() as f64 / elapsed.as_secs_f64());
                    1
                }
            };
            cpu[slot].push(common::cpu_us_per_event(cpu_start, events.len()));
            let syscalls = common::syscalls_per_event(syscalls_start, events.len());
            server_cpu[slot].push(common::server_cpu_us_per_event(
                server_cpu_start,
                events.len(),
            ));
            assert_eq!(stream_messages(&raw.js).await, events.len() as u64);
            eprintln!(
                "  [6] round {} {:<9} {:>9.0} events/s, CPU client {:.1} server {:.1} us/event, {syscalls}",
                round + 1,
                side.name(),
                rates[slot].last().copied().unwrap_or_default(),
                cpu[slot].last().copied().unwrap_or_default(),
                server_cpu[slot].last().copied().unwrap_or_default(),
            );
        }
    }
    let mut scenario = Scenario::new(
        "6",
        format!(
            "fast-ingest publish (`ingest`) vs raw windowed publish (window {}), {} events",
            settings.window, settings.events
        ),
    );
    scenario.push(Metric::throughput("events/s", &rates[0], &rates[1], 1.5));
    scenario.push(Metric::cpu(&cpu[0], &cpu[1]));
    scenario.push(Metric::server_cpu(&server_cpu[0], &server_cpu[1]));
    scenario
}
