//! Scenario 0 (diagnostic, not in the default set): CPU per event of building
//! the message, no server. The raw hand-built message against jetevents'
//! publish preparation rebuilt from its public pieces, stage by stage, so a
//! gap in scenario 1 can be traced to a stage.

use std::time::Instant;

use async_nats::HeaderMap;
use jetevents::client::Client;
use jetevents::codec::{self, Encoding};
use jetevents::{Envelope, EventType};

use crate::common::{self, raw_message, SOURCE};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// Runs jetevents' preparation up to and including `stages` steps:
/// 1 type, 2 subject, 3 envelope (serialize), 4 trace context, 5 encode
/// headers, 6 size check, 7 the header clone `send` makes per attempt.
fn prepare(client: &Client, event: &common::AppointmentBooked, stages: u32) -> usize {
    let ty = EventType::of::<common::AppointmentBooked>().expect("type");
    if stages < 2 {
        return ty.as_str().len();
    }
    let key = jetevents::Event::key(event);
    let subject = client
        .subjects()
        .event(&ty, key.as_deref())
        .expect("subject");
    if stages < 3 {
        return subject.len();
    }
    let mut envelope = Envelope::from_event(SOURCE, event).expect("envelope");
    if stages < 4 {
        return envelope.id.len();
    }
    jetevents::trace::inject(&mut envelope);
    if stages < 5 {
        return envelope.extensions.len();
    }
    let mut headers = HeaderMap::new();
    let payload = codec::encode_into(&envelope, Encoding::Binary, &mut headers).expect("encode");
    headers.insert(async_nats::header::NATS_MESSAGE_ID, envelope.id.as_str());
    if stages < 6 {
        return payload.len();
    }
    let size = codec::wire_size(&headers, payload.len());
    if stages < 7 {
        return size;
    }
    let copy = headers.clone();
    std::hint::black_box(&copy);
    size
}

fn time_per_event(
    events: &[common::AppointmentBooked],
    mut f: impl FnMut(&common::AppointmentBooked) -> usize,
) -> f64 {
    let start = Instant::now();
    let mut sink = 0usize;
    for event in events {
        sink = sink.wrapping_add(f(event));
    }
    std::hint::black_box(sink);
    start.elapsed().as_secs_f64() * 1e9 / events.len() as f64
}

pub fn encode(settings: &Settings, je: &Client) -> Scenario {
    let events = common::events(0, settings.events.min(100_000));
    // Warm up allocator and caches.
    time_per_event(&events[..events.len().min(10_000)], |e| {
        raw_message(e).2.len()
    });
    let names = [
        "type",
        "subject",
        "envelope+json",
        "trace context",
        "encode headers",
        "size check",
        "header clone",
    ];
    let mut rounds_raw = Vec::new();
    let mut rounds_je = Vec::new();
    let mut stages = vec![Vec::new(); names.len()];
    for _ in 0..settings.rounds {
        rounds_raw.push(time_per_event(&events, |e| {
            let (subject, headers, payload) = raw_message(e);
            subject.len() + headers.len() + payload.len()
        }));
        for (index, stage) in stages.iter_mut().enumerate() {
            stage.push(time_per_event(&events, |e| {
                prepare(je, e, index as u32 + 1)
            }));
        }
        rounds_je.push(*stages.last().and_then(|s| s.last()).unwrap_or(&0.0));
    }
    let mut scenario = Scenario::new(
        "0",
        format!(
            "CPU to build one message, no server ({} events)",
            events.len()
        ),
    );
    let mut metric = Metric::lower(
        "ns/event (all stages)".to_owned(),
        "ns",
        common::median(&rounds_je),
        common::median(&rounds_raw),
        0.0,
    );
    metric.jetevents_runs = rounds_je;
    metric.raw_runs = rounds_raw;
    scenario.push(metric);
    let mut previous = 0.0;
    for (name, stage) in names.iter().zip(&stages) {
        let cumulative = common::median(stage);
        scenario.notes.push(format!(
            "jetevents stage {name}: +{:.0} ns (cumulative {cumulative:.0} ns)",
            cumulative - previous
        ));
        previous = cumulative;
    }
    scenario
}
