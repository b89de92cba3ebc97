//! The circuit breaker against a real server: a downstream that fails for
//! a while trips it; while it is open the events wait (no attempts spent,
//! no dead letters, delivery counts low) and consumption resumes after.
//!
//! Alone in its binary: it installs a global subscriber, to read the
//! breaker's state on the `process` spans.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents::consume::{
    BreakerConfig, BreakerWindow, CircuitBreaker, Context, HandlerError, RetryPolicy,
};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

mod consume_common;
mod metrics_reader;
mod support;
use consume_common::{eventually, Log, OrderPlaced, OrderShipped, Running, World};
use metrics_reader::{Metrics, Recorder};

const GROUP: &str = "ledger";
const EVENTS: u64 = 3;
const ATTEMPTS: u32 = 4;
/// Failed probes the outage lasts for: with the open duration below, over
/// ten times the handler timeout, and more failed probes than the events
/// have attempts between them.
const FAILED_PROBES: u64 = 12;

/// A downstream that is down until told otherwise, and every call it got:
/// (event, delivery count, succeeded).
#[derive(Clone, Default)]
struct Downstream {
    down: Arc<AtomicBool>,
    calls: Log<(u64, u64, bool)>,
}

async fn call_downstream(event: OrderPlaced, ctx: Context<Downstream>) -> Result<(), HandlerError> {
    // Published before the downstream call: every run of the event, a
    // failed probe's too, must publish it with the same id.
    ctx.publish(&OrderShipped {
        order: event.order.clone(),
    })
    .await
    .unwrap();
    let downstream = ctx.state();
    let up = !downstream.down.load(Ordering::SeqCst);
    downstream.calls.push((event.n, ctx.delivery_count(), up));
    if up {
        Ok(())
    } else {
        Err(HandlerError::transient("downstream unavailable"))
    }
}

/// The breaker's state gauge (0 closed, 1 open, 2 half-open), once recorded.
fn state_gauge(recorder: &Recorder) -> Option<i64> {
    let totals = recorder.totals();
    Metrics(&totals).gauge_i64(
        "jetevents.consume.breaker.state",
        &[KeyValue::new("jetevents.breaker.name", "ledger-api")],
    )
}

/// Transitions of the breaker into `state`.
fn transitions_into(recorder: &Recorder, state: &'static str) -> u64 {
    let totals = recorder.totals();
    let metrics = Metrics(&totals);
    let name = "jetevents.consume.breaker.transitions";
    metrics.find(name).map_or(0, |_| {
        metrics.sum_u64(name, &[KeyValue::new("jetevents.breaker.state", state)])
    })
}

/// Collects the spans of this test binary.
fn export_spans() -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("breaker-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    exporter
}

/// The `process` spans whose call the breaker let through in `state`.
fn processed_in<'a>(spans: &'a [SpanData], state: &str) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|span| {
            span.attributes.iter().any(|kv| {
                kv.key.as_str() == "jetevents.breaker.state" && kv.value.to_string() == state
            })
        })
        .collect()
}

fn has_event(span: &SpanData, name: &str) -> bool {
    span.events.iter().any(|event| event.name == name)
}

#[tokio::test]
async fn an_outage_trips_the_breaker_without_spending_attempts_and_consumption_resumes() {
    let spans = export_spans();
    let recorder = Recorder::new();
    let url = jetevents_testcontainers::shared().await.url();
    let meter = recorder.meter();
    let client = support::connect(&url, &support::unique("env"), |config| {
        config.meter = Some(meter)
    })
    .await;
    let world = World::provision(client).await;
    let breaker = CircuitBreaker::new(
        "ledger-api",
        BreakerConfig::default()
            .window(BreakerWindow::Calls(4))
            .minimum_calls(4)
            .failure_rate(0.5)
            .open_for(Duration::from_millis(300))
            .half_open_probes(1),
    );
    let downstream = Downstream::default();
    downstream.down.store(true, Ordering::SeqCst);
    let consumer = world
        .consumer(GROUP)
        .retry(RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(ATTEMPTS))
        .concurrency(2)
        .prefetch(2)
        // Far shorter than the outage: a held event must not time out.
        .handler_timeout(Duration::from_millis(250))
        .with_state(downstream.clone())
        .handle(call_downstream)
        .circuit_breaker(&breaker)
        .build()
        .await
        .unwrap();
    assert_eq!(state_gauge(&recorder), Some(0), "closed before any call");
    let running = Running::start(consumer);
    for n in 0..EVENTS {
        world.publish(n).await;
    }

    eventually("the breaker opened", Duration::from_secs(30), || async {
        state_gauge(&recorder) == Some(1)
    })
    .await;
    eventually(
        "probes failed for the whole outage",
        Duration::from_secs(60),
        || async { transitions_into(&recorder, "half_open") >= FAILED_PROBES },
    )
    .await;
    let dead_letters = world.dead_letter_api();
    assert!(
        dead_letters.list(50).await.unwrap().is_empty(),
        "nothing dead-lettered during the outage"
    );
    let during_outage = downstream.calls.items();
    let highest_delivery = during_outage.iter().map(|call| call.1).max().unwrap();
    assert!(
        highest_delivery <= u64::from(ATTEMPTS),
        "delivery counts stay within the attempts: {during_outage:?}"
    );

    downstream.down.store(false, Ordering::SeqCst);
    eventually("every event handled", Duration::from_secs(30), || async {
        let mut handled: Vec<u64> = downstream
            .calls
            .items()
            .into_iter()
            .filter(|call| call.2)
            .map(|call| call.0)
            .collect();
        handled.sort_unstable();
        handled.dedup();
        handled.len() as u64 == EVENTS
    })
    .await;
    world.wait_settled(GROUP).await;
    assert!(dead_letters.list(50).await.unwrap().is_empty());
    let stored = world.stream().await.info().await.unwrap().state.messages;
    assert_eq!(stored, 2 * EVENTS, "each event and one follow-up of it");
    eventually("the breaker closed", Duration::from_secs(10), || async {
        state_gauge(&recorder) == Some(0)
    })
    .await;
    assert!(transitions_into(&recorder, "open") >= FAILED_PROBES);
    assert!(transitions_into(&recorder, "half_open") >= FAILED_PROBES);
    assert_eq!(transitions_into(&recorder, "closed"), 1);
    let highest_delivery = downstream.calls.items().iter().map(|call| call.1).max();
    assert!(highest_delivery <= Some(u64::from(ATTEMPTS)));
    running.stop().await;

    // The probe that closed it, held before it ran, and the calls after.
    let spans = spans.get_finished_spans().unwrap();
    let probes = processed_in(&spans, "half_open");
    assert!(probes
        .iter()
        .any(|span| has_event(span, "held by an open circuit breaker")
            && has_event(span, "circuit breaker closed")));
    assert!(!processed_in(&spans, "closed").is_empty());
    assert!(spans
        .iter()
        .any(|span| has_event(span, "circuit breaker opened")));
}
