//! Handler middleware: users' tower layers on a consumer and on one route,
//! off-the-shelf tower layers, a handler's explicit retry-after, and a
//! panic inside a layer.
//!
//! The spans of the retry-after case need a global subscriber (tracing
//! caches per call site whether anyone listens): every test installs the
//! same one first, through `spans`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use jetevents::consume::{
    BoxError, Context, DeadLetterReason, Delivery, HandlerError, Outcome, RetryPolicy,
};
use jetevents::envelope::Envelope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{Layer, Service};
use tracing_subscriber::layer::SubscriberExt;

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, OrderShipped, Running, World};

/// The spans of every test in this binary.
fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("middleware-tests")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        exporter
    })
}

/// An idempotency check, as a service would write one: skips (acks) events
/// whose CloudEvents id it has handled before, and remembers an id once
/// its event was handled (acked), so a failed run is retried normally.
#[derive(Clone, Default)]
struct SkipHandledLayer {
    handled: Arc<Mutex<HashSet<String>>>,
}

#[derive(Clone)]
struct SkipHandled<Inner> {
    inner: Inner,
    handled: Arc<Mutex<HashSet<String>>>,
}

impl<Inner> Layer<Inner> for SkipHandledLayer {
    type Service = SkipHandled<Inner>;
    fn layer(&self, inner: Inner) -> Self::Service {
        SkipHandled {
            inner,
            handled: self.handled.clone(),
        }
    }
}

impl<S, Inner> Service<Delivery<S>> for SkipHandled<Inner>
where
    Inner: Service<Delivery<S>, Response = Outcome, Error = BoxError>,
    Inner::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery<S>) -> Self::Future {
        let id = delivery.envelope().id.clone();
        if self.handled.lock().unwrap().contains(&id) {
            return Box::pin(async { Ok(Outcome::ack()) });
        }
        let handled = self.handled.clone();
        let call = self.inner.call(delivery);
        Box::pin(async move {
            let outcome = call.await?;
            if outcome.is_ack() {
                handled.lock().unwrap().insert(id);
            }
            Ok(outcome)
        })
    }
}

/// Calls `look` with each delivery before the inner service: a way to see
/// which deliveries a layer gets, or to make it panic.
#[derive(Clone)]
struct TapLayer(Arc<dyn Fn(&Envelope) + Send + Sync>);

#[derive(Clone)]
struct Tap<Inner> {
    inner: Inner,
    look: Arc<dyn Fn(&Envelope) + Send + Sync>,
}

impl TapLayer {
    fn new(look: impl Fn(&Envelope) + Send + Sync + 'static) -> Self {
        Self(Arc::new(look))
    }
}

impl<Inner> Layer<Inner> for TapLayer {
    type Service = Tap<Inner>;
    fn layer(&self, inner: Inner) -> Self::Service {
        Tap {
            inner,
            look: self.0.clone(),
        }
    }
}

impl<S, Inner: Service<Delivery<S>>> Service<Delivery<S>> for Tap<Inner> {
    type Response = Inner::Response;
    type Error = Inner::Error;
    type Future = Inner::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery<S>) -> Self::Future {
        (self.look)(delivery.envelope());
        self.inner.call(delivery)
    }
}

/// Waits until `group` has nothing pending, then stops the consumer.
async fn settle_and_stop(world: &World, group: &str, running: Running) {
    world.wait_settled(group).await;
    running.stop().await;
}

#[tokio::test]
async fn an_idempotency_layer_skips_an_event_republished_under_another_message_id() {
    spans();
    let world = World::on_shared_server().await;
    let calls: Log<String> = Log::default();
    let consumer = world
        .consumer("idempotent")
        .with_state(calls.clone())
        .handle(|_: OrderPlaced, ctx: Context<Log<String>>| async move {
            ctx.state().push(ctx.id().to_owned());
            Ok(())
        })
        .layer(SkipHandledLayer::default())
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    // A producer that lost its pub ack republishes the same CloudEvent
    // under a new message id, so the server's deduplication lets it in.
    let envelope = Envelope::from_event("/tests", &order(1)).unwrap();
    let publisher = world.client.publisher();
    let subject = world.subject_of(1);
    publisher
        .publish_envelope(&subject, envelope.clone(), Default::default())
        .await
        .unwrap();
    let (mut headers, payload) =
        jetevents::codec::encode(&envelope, jetevents::codec::Encoding::Binary).unwrap();
    headers.insert("Nats-Msg-Id", "republished-after-a-lost-ack");
    let jetstream = world.client.jetstream().unwrap();
    let stored = jetstream
        .publish_with_headers(subject, headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        !stored.duplicate,
        "the server must store the republished copy"
    );
    let marker = world.publish(2).await;

    eventually("the marker is handled", Duration::from_secs(20), || async {
        calls.items().contains(&marker)
    })
    .await;
    settle_and_stop(&world, "idempotent", running).await;
    assert_eq!(calls.items(), [envelope.id, marker]);
}

#[tokio::test]
async fn an_off_the_shelf_concurrency_limit_composes() {
    spans();
    let world = World::on_shared_server().await;
    let running_now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handled: Log<u64> = Log::default();
    let state = (running_now, most.clone(), handled.clone());
    type Counters = (Arc<AtomicUsize>, Arc<AtomicUsize>, Log<u64>);
    let consumer = world
        .consumer("limited")
        .concurrency(8)
        .with_state(state)
        .handle(|event: OrderPlaced, ctx: Context<Counters>| async move {
            let (running_now, most, handled) = ctx.state();
            let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Work that takes a while, so unlimited calls would overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            running_now.fetch_sub(1, Ordering::SeqCst);
            handled.push(event.n);
            Ok(())
        })
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .build()
        .await
        .unwrap();
    for n in 1..=6 {
        world.publish(n).await;
    }
    let running = Running::start(consumer);
    eventually("all handled", Duration::from_secs(20), || async {
        handled.len() == 6
    })
    .await;
    settle_and_stop(&world, "limited", running).await;
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_retry_after_from_the_handler_is_honoured_with_its_delay() {
    const ASKED: Duration = Duration::from_millis(1500);
    let exporter = spans();
    let world = World::on_shared_server().await;
    let deliveries: Log<(u64, Instant)> = Log::default();
    let consumer = world
        .consumer("throttled")
        // A policy delay far from the asked one, so the span tells them apart.
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
        .with_state(deliveries.clone())
        .handle(
            |_: OrderPlaced, ctx: Context<Log<(u64, Instant)>>| async move {
                ctx.state().push((ctx.delivery_count(), Instant::now()));
                if ctx.delivery_count() == 1 {
                    // A downstream said 429, Retry-After 1.5 s.
                    Outcome::retry_after(ASKED)
                } else {
                    Outcome::ack()
                }
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;
    eventually("the redelivery", Duration::from_secs(20), || async {
        deliveries.len() == 2
    })
    .await;
    settle_and_stop(&world, "throttled", running).await;

    let times = deliveries.items();
    assert!(
        times[1].1 - times[0].1 >= ASKED,
        "redelivered after {:?}",
        times[1].1 - times[0].1
    );
    let subject = world.subject_of(1);
    let naked: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| {
            attribute(span, "messaging.destination.name").as_deref() == Some(subject.as_str())
                && attribute(span, "jetevents.settle").as_deref() == Some("nak")
        })
        .collect();
    assert_eq!(naked.len(), 1);
    let delay = naked[0]
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "jetevents.nak_delay_ms")
        .map(|kv| kv.value.clone());
    assert_eq!(delay, Some(Value::I64(1500)));
}

#[tokio::test]
async fn a_route_layer_runs_for_its_route_only() {
    spans();
    let world = World::on_shared_server().await;
    let seen_by_layer: Log<String> = Log::default();
    let handled: Log<String> = Log::default();
    let layer_log = seen_by_layer.clone();
    let consumer = world
        .consumer("routed")
        .with_state(handled.clone())
        .handle(|_: OrderPlaced, ctx: Context<Log<String>>| async move {
            ctx.state().push(ctx.event_type().to_owned());
            Ok(())
        })
        .route_layer(TapLayer::new(move |envelope| {
            layer_log.push(envelope.event_type.clone())
        }))
        .handle(|_: OrderShipped, ctx: Context<Log<String>>| async move {
            ctx.state().push(ctx.event_type().to_owned());
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;
    world.publish_shipped("o-1").await;
    eventually("both handled", Duration::from_secs(20), || async {
        handled.len() == 2
    })
    .await;
    settle_and_stop(&world, "routed", running).await;
    assert_eq!(seen_by_layer.items(), ["shop.order.placed.v1"]);
}

#[tokio::test]
async fn a_panic_inside_a_layer_is_retried_then_dead_lettered() {
    spans();
    let world = World::on_shared_server().await;
    let handled: Log<u64> = Log::default();
    let consumer = world
        .consumer("panicky")
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2))
        .with_state(handled.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .layer(TapLayer::new(|envelope| {
            panic!("layer bug on {}", envelope.id)
        }))
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    let id = world.publish(1).await;
    let entries = support::dead_lettered(
        "the dead letter",
        &world.dead_letter_api(),
        Duration::from_secs(20),
    )
    .await;
    settle_and_stop(&world, "panicky", running).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, DeadLetterReason::AttemptsExhausted);
    assert_eq!(entries[0].delivery_count, 2);
    assert_eq!(
        entries[0].error,
        format!("handler panicked: layer bug on {id}")
    );
    assert!(handled.items().is_empty());
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}
