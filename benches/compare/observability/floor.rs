//! Scenario 7's floor: what the `tracing` registry, the OpenTelemetry layer
//! and the SDK meter cost per event with none of jetevents' work around
//! them, measured in a child with the "unsampled" install:
//!
//! - (a) one empty span per event, created, entered, exited and closed;
//! - (b) the span jetevents makes per event with its fields (values from a
//!   pre-built event), and what jetevents does with it per event: the
//!   publisher reads its trace context, the consumer parents it on the
//!   producer's and records the event's identity;
//! - (c) the metric records jetevents makes per event (same instruments,
//!   same attributes), and nothing else.
//!
//! The spans stay open `window` at a time, closed oldest first, as
//! `publish_many` keeps its events' spans until their acks (and the
//! consumer its deliveries' until settled): what the registry and the
//! layer hold for them is as large as in the real work.
//!
//! Against the gap "unsampled - off" of the real work: when (a) + (c)
//! alone are over 5% of "off", no change of ours reaches 0.95 while every
//! event keeps a span and its metrics through these crates at their
//! defaults.

use std::collections::VecDeque;
use std::hint::black_box;

use jetevents::envelope::Envelope;
use jetevents::metrics::PerEventRecords;
use jetevents::span_fields::{process_span, publish_span, Delivered, PublishedEvent};
use jetevents::Event;

use super::Work;
use crate::common::{self, AppointmentBooked};

/// The consumer group the process rows name.
const GROUP: &str = "obs-floor";

/// One floor row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    EmptySpan,
    PublishSpan,
    ProcessSpan,
    PublishMetrics,
    ProcessMetrics,
}

impl Floor {
    const ALL: [Floor; 5] = [
        Floor::EmptySpan,
        Floor::PublishSpan,
        Floor::ProcessSpan,
        Floor::PublishMetrics,
        Floor::ProcessMetrics,
    ];

    /// The rows of `work`: (a), (b), (c).
    pub fn of(work: Work) -> [Floor; 3] {
        match work {
            Work::Publish => [Floor::EmptySpan, Floor::PublishSpan, Floor::PublishMetrics],
            Work::Consume => [Floor::EmptySpan, Floor::ProcessSpan, Floor::ProcessMetrics],
        }
    }

    /// The child's work name.
    pub fn name(self) -> &'static str {
        match self {
            Floor::EmptySpan => "floor-empty-span",
            Floor::PublishSpan => "floor-publish-span",
            Floor::ProcessSpan => "floor-process-span",
            Floor::PublishMetrics => "floor-publish-metrics",
            Floor::ProcessMetrics => "floor-process-metrics",
        }
    }

    pub fn parse(name: &str) -> Option<Floor> {
        Floor::ALL.into_iter().find(|floor| floor.name() == name)
    }

    /// The table's name of the row.
    pub fn row(self) -> &'static str {
        match self {
            Floor::EmptySpan => "(a) empty span",
            Floor::PublishSpan | Floor::ProcessSpan => "(b) our span, fields",
            Floor::PublishMetrics | Floor::ProcessMetrics => "(c) our metrics",
        }
    }
}

/// Does `floor`'s work for `count` events, recording on `meter`;
/// `window` is `publish_many`'s (its bursts are an eighth of it, at most
/// 32: `publish/pipeline.rs`).
pub fn run(floor: Floor, count: usize, window: usize, meter: &opentelemetry::metrics::Meter) {
    let burst = (window / 8).clamp(1, 32) as u64;
    let event = common::event(0);
    let (subject, _, _) = common::raw_message(&event);
    let mut envelope = Envelope::from_event(common::SOURCE, &event).expect("envelope");
    // As the stream's events carry it (see `consume::fill`).
    jetevents::trace::inject_context(&mut envelope, &common::trace_context());
    let records = PerEventRecords::new(meter, AppointmentBooked::TYPE, GROUP);
    let mut open = VecDeque::with_capacity(window + 1);
    let mut keep_open = |span: tracing::Span| {
        open.push_back(span);
        if open.len() > window {
            open.pop_front();
        }
    };
    for sequence in 1..=count as u64 {
        match floor {
            Floor::EmptySpan => {
                let span = tracing::info_span!(target: "jetevents::publish::prepare", "publish");
                drop(span.enter());
                keep_open(span);
            }
            Floor::PublishSpan => {
                let span = publish_span(PublishedEvent {
                    subject: &subject,
                    id: &envelope.id,
                    event_type: &envelope.event_type,
                    source: &envelope.source,
                    correlation_id: None,
                });
                black_box(jetevents::trace::context_of(&span));
                drop(span.enter());
                keep_open(span);
            }
            Floor::ProcessSpan => {
                let span = process_span(Delivered {
                    group: GROUP,
                    subject: &subject,
                    stream: common::STREAM,
                    stream_sequence: sequence,
                    delivered: 1,
                });
                jetevents::trace::continue_in_process_span(&span, &envelope);
                drop(span.enter());
                keep_open(span);
            }
            // A duration in the histograms' middle buckets.
            Floor::PublishMetrics => records.publish(black_box(0.0005), burst),
            Floor::ProcessMetrics => records.process(black_box(0.0002)),
        }
    }
}
