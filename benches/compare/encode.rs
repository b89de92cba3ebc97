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

/// The raw message up to `stages` steps: 1 JSON payload, 2 id, time,
/// traceparent and subject strings, 3 the async-nats `HeaderMap` (all of
/// [`raw_message`]).
fn raw_stages(event: &common::AppointmentBooked, stages: u32) -> usize {
    if stages >= 3 {
        let (subject, headers, payload) = raw_message(event);
        return subject.len() + headers.len() + payload.len();
    }
    let payload = bytes::Bytes::from(serde_json::to_vec(event).expect("serialize"));
    if stages < 2 {
        return payload.len();
    }
    let id = uuid::Uuid::now_v7().to_string();
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let traceparent = {
        use opentelemetry::trace::TraceContextExt;
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span = span.span_context();
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    };
    let subject = format!(
        "{}.{}.{}",
        common::ENV,
        <common::AppointmentBooked as jetevents::Event>::TYPE,
        event.appointment_id
    );
    payload.len() + id.len() + time.len() + traceparent.len() + subject.len()
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
    let raw_names = [
        "json payload",
        "id, time, traceparent, subject",
        "HeaderMap (9 headers)",
    ];
    let mut raw_stage_times = vec![Vec::new(); raw_names.len()];
    for _ in 0..settings.rounds {
        for (index, stage) in raw_stage_times.iter_mut().enumerate() {
            stage.push(time_per_event(&events, |e| raw_stages(e, index as u32 + 1)));
        }
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
    // Decoding, the consumer's side: the messages jetevents builds, decoded by
    // jetevents (envelope, typed data, trace context) and by hand.
    // `JE_BENCH_DECODE_ENCODING=structured` builds them in structured mode
    // instead, to profile that decoder (the raw side then fails: jetevents
    // only).
    let decode_encoding = match std::env::var("JE_BENCH_DECODE_ENCODING").as_deref() {
        Ok("structured") => Encoding::Structured,
        _ => Encoding::Binary,
    };
    let messages: Vec<(HeaderMap, bytes::Bytes)> = events
        .iter()
        .map(|event| {
            let mut envelope = Envelope::from_event(SOURCE, event).expect("envelope");
            jetevents::trace::inject(&mut envelope);
            let mut headers = HeaderMap::new();
            let payload =
                codec::encode_into(&envelope, decode_encoding, &mut headers).expect("encode");
            headers.insert(async_nats::header::NATS_MESSAGE_ID, envelope.id.as_str());
            (headers, payload)
        })
        .collect();
    let time_decode = |f: &dyn Fn(&HeaderMap, &bytes::Bytes) -> usize| {
        let start = Instant::now();
        let mut sink = 0usize;
        for (headers, payload) in &messages {
            sink = sink.wrapping_add(f(headers, payload));
        }
        std::hint::black_box(sink);
        start.elapsed().as_secs_f64() * 1e9 / messages.len() as f64
    };
    let decode_names = [
        "envelope (codec::decode)",
        "typed data (decode_data)",
        "trace context (extract)",
    ];
    let mut decode_stages = vec![Vec::new(); decode_names.len()];
    let mut decode_raw = Vec::new();
    for _ in 0..settings.rounds {
        if decode_encoding != Encoding::Binary {
            decode_raw.push(0.0);
        } else {
            decode_raw.push(time_decode(&|headers, payload| {
                let decoded = common::raw_decode(Some(headers), payload);
                decoded.id.len() + decoded.event.duration_minutes as usize
            }));
        }
        for (index, stage) in decode_stages.iter_mut().enumerate() {
            stage.push(time_decode(&|headers, payload| {
                let envelope = codec::decode(Some(headers), payload).expect("decode");
                if index < 1 {
                    return envelope.id.len();
                }
                let event: common::AppointmentBooked = envelope.decode_data().expect("data");
                if index < 2 {
                    return event.duration_minutes as usize;
                }
                let context = jetevents::trace::extract(&envelope);
                std::hint::black_box(&context);
                event.duration_minutes as usize
            }));
        }
    }

    let mut scenario = Scenario::new(
        "0",
        format!(
            "CPU to build and to decode one message, no server ({} events)",
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
    let mut decode = Metric::lower(
        "decode ns/event (all stages)".to_owned(),
        "ns",
        common::median(decode_stages.last().map_or(&[][..], |s| &s[..])),
        common::median(&decode_raw),
        0.0,
    );
    decode.jetevents_runs = decode_stages.last().cloned().unwrap_or_default();
    decode.raw_runs = decode_raw;
    scenario.push(decode);
    let mut previous = 0.0;
    for (name, stage) in decode_names.iter().zip(&decode_stages) {
        let cumulative = common::median(stage);
        scenario.notes.push(format!(
            "jetevents decode stage {name}: +{:.0} ns (cumulative {cumulative:.0} ns)",
            cumulative - previous
        ));
        previous = cumulative;
    }
    let mut previous = 0.0;
    for (name, stage) in raw_names.iter().zip(&raw_stage_times) {
        let cumulative = common::median(stage);
        scenario.notes.push(format!(
            "raw stage {name}: +{:.0} ns (cumulative {cumulative:.0} ns)",
            cumulative - previous
        ));
        previous = cumulative;
    }
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
