//! The consumer's process span continues the producer's trace (alone in its
//! binary: it installs a global subscriber).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::Context;
use jetevents::subject::destination_template;

mod consume_common;
mod support;
use consume_common::{eventually, Log, OrderPlaced, OrderShipped, Running, World};

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn the_process_span_continues_the_producers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("consume-tests")));
    // Global, and this test alone in its binary: tracing caches per
    // call site whether anyone listens, and a thread-local subscriber
    // misses spans whose call sites other tests' threads hit first.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let world = World::on_shared_server().await;
    let followed: Log<u64> = Log::default();
    let consumer = world
        .consumer("tracer")
        .with_state(followed.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.publish(&OrderShipped { order: event.order }).await?;
            Ok(())
        })
        .handle(|_: OrderShipped, ctx: Context<Log<u64>>| async move {
            ctx.state().push(1);
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    world
        .publish(7)
        .instrument(tracing::info_span!("checkout"))
        .await;
    eventually("follow-up handled", Duration::from_secs(20), || async {
        followed.len() == 1
    })
    .await;
    world.wait_settled("tracer").await;
    running.stop().await;
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let checkout = spans.iter().find(|span| span.name == "checkout").unwrap();
    let trace_id = checkout.span_context.trace_id();
    let process: Vec<_> = spans
        .iter()
        .filter(|span| span.name.starts_with("process "))
        .collect();
    assert_eq!(
        process.len(),
        2,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for span in &process {
        // One trace from the checkout through both consumers.
        assert_eq!(span.span_context.trace_id(), trace_id, "{}", span.name);
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert!(span.parent_span_is_remote);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("messaging.system").as_deref(), Some("nats"));
        assert_eq!(
            attribute("messaging.consumer.group.name").as_deref(),
            Some("tracer")
        );
        assert_eq!(attribute("jetevents.settle").as_deref(), Some("ack"));
        assert!(attribute("cloudevents.event_id").is_some());
    }
    let placed = process
        .iter()
        .find(|span| {
            let subject = world.subject_of(7);
            span.name == format!("process {}", destination_template(&subject))
                && span.attributes.iter().any(|kv| {
                    kv.key.as_str() == "messaging.destination.name"
                        && kv.value.to_string() == subject
                })
        })
        .unwrap();
    assert_eq!(
        placed
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "cloudevents.event_type")
            .map(|kv| kv.value.to_string())
            .as_deref(),
        Some("shop.order.placed.v1")
    );
}
