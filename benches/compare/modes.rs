//! Scenario 11 (opt-in): jetevents in binary content mode (the default)
//! against jetevents in structured mode, same events, same run. The table's
//! "jetevents" column is binary mode, its "raw async-nats" column
//! structured mode: the ratio is binary/structured.

use jetevents::client::Client;
use jetevents::codec::Encoding;

use crate::common::{self, order, recreate_stream, stream_messages, Raw, Side};
use crate::consume::{consume_as_group, filters, Tally};
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
                "  [11] round {} {:<10} publish {:>9.0} (CPU client {:.1} server {:.1} us/event, {syscalls}) consume {:>9.0} events/s",
                round + 1,
                mode_name(side),
                publish_rates[slot].last().copied().unwrap_or_default(),
                publish_cpu[slot].last().copied().unwrap_or_default(),
                publish_server_cpu[slot].last().copied().unwrap_or_default(),
                consume_rates[slot].last().copied().unwrap_or_default(),
            );
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
    scenario
        .notes
        .push("binary mode in the jetevents column, structured mode in the raw column".to_owned());
    scenario
}
