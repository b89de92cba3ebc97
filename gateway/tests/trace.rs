//! The gateway's send span continues the trace the event carries (alone in
//! its binary: it installs a global subscriber, as tracing caches per call
//! site whether anyone listens).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::*;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The trace the test's publisher runs in.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn the_send_span_is_a_child_of_the_events_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("gateway-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let world = World::start(|_, _| {}).await;
    let auth = format!("Bearer {}", demo_token());
    let mut client =
        SseClient::connect(world.addr, "/events", &[("authorization", &auth)], None).await;
    // A request arriving with a known trace: the event is published within it.
    let request = tracing::info_span!("request");
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = request.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    world.publish(1).instrument(request).await;

    let frame = client.next_within(Duration::from_secs(15)).await.unwrap();
    let event: serde_json::Value = serde_json::from_str(&frame.data).unwrap();
    let traceparent = event["traceparent"].as_str().unwrap();
    let [_, trace_id, event_span, _] = traceparent.split('-').collect::<Vec<_>>()[..] else {
        panic!("malformed traceparent {traceparent}");
    };
    assert_eq!(trace_id, TRACE, "the event carries the request's trace");

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let sends: Vec<_> = spans
        .iter()
        .filter(|span| {
            span.attributes
                .iter()
                .any(|attribute| attribute.key.as_str() == "jetevents.gateway.transport")
        })
        .collect();
    assert_eq!(
        sends.len(),
        1,
        "{:?}",
        spans.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
    let send = sends[0];
    assert_eq!(send.name, "send");
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.span_context.trace_id().to_string(), TRACE);
    assert_eq!(send.parent_span_id.to_string(), event_span);
    assert!(send.parent_span_is_remote);
}
