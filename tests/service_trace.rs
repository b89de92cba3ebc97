//! One trace from the caller through the endpoint to the event it publishes
//! (alone in its binary: it installs a global subscriber).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::provision::StreamSpec;
use jetevents::service::{Context, EndpointError};
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

mod service_common;
mod support;
use service_common::{quote, unique, QuoteGiven, QuoteRequested};

/// What the endpoint publishes after quoting.
#[derive(Debug, Serialize, Deserialize)]
struct QuoteIssued {
    sku: String,
}

impl jetevents::Event for QuoteIssued {
    const TYPE: &'static str = "pricing.quote.issued.v1";
}

async fn quote_and_announce(
    request: QuoteRequested,
    ctx: Context,
) -> Result<QuoteGiven, EndpointError> {
    ctx.publish(&QuoteIssued {
        sku: request.sku.clone(),
    })
    .await?;
    Ok(QuoteGiven {
        cents: 1,
        instance: String::new(),
    })
}

#[tokio::test]
async fn one_trace_runs_from_the_caller_through_the_endpoint_to_its_follow_up() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("service-tests")));
    // Global: tracing caches per call site whether anyone listens.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = support::shared_server().await;
    let client = support::connect(&server.url(), &unique("env"), |_| {}).await;
    let stream = unique("PRICING");
    let spec = StreamSpec::for_domain(client.subjects(), &stream, "pricing").unwrap();
    client.ensure_stream(&spec).await.unwrap();
    let running = client
        .service(unique("pricing"), "1.0.0")
        .endpoint(quote_and_announce)
        .start()
        .await
        .unwrap();

    let _: QuoteGiven = client
        .call(&quote("a"))
        .instrument(tracing::info_span!("checkout"))
        .await
        .unwrap();
    running.stop().await;
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
    let named = |prefix: &str| {
        spans
            .iter()
            .find(|span| span.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} span in {names:?}"))
    };
    let trace_id = named("checkout").span_context.trace_id();
    let call = named("call rpc.");
    assert_eq!(call.span_kind, SpanKind::Client);
    let process = named("process rpc.");
    assert_eq!(process.span_kind, SpanKind::Server);
    assert!(process.parent_span_is_remote);
    assert_eq!(call.span_context.trace_id(), trace_id);
    assert_eq!(process.span_context.trace_id(), trace_id);
    // The endpoint's span is the child of the caller's.
    assert_eq!(process.parent_span_id, call.span_context.span_id());
    let request_id = process
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "cloudevents.event_id")
        .map(|kv| kv.value.to_string())
        .unwrap();

    // The follow-up carries the same trace and names the request its cause.
    let stored = client
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!(
            "{}.pricing.quote.issued.v1",
            client.subjects().env()
        ))
        .await
        .unwrap();
    let follow_up = jetevents::codec::decode(Some(&stored.headers), &stored.payload).unwrap();
    let traceparent = follow_up.traceparent().unwrap();
    let follow_up_trace = jetevents::trace::parse_traceparent(traceparent, None).unwrap();
    assert_eq!(follow_up_trace.trace_id(), trace_id);
    assert_eq!(follow_up.causation_id(), Some(request_id.as_str()));
}
