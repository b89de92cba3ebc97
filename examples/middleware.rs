//! Handler middleware: a rate limit written as a tower layer, an
//! off-the-shelf timeout, and a handler that says when to come back.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example producer -- 10
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example middleware
//! ```
//!
//! Prints `handled <order> delivery=<n>` at most twice a second, and
//! `throttled <order>` for the orders the pretend payment gateway turns
//! away at first (they come back after the delay it asked for). Stops on
//! Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::consume::{BoxError, Consumer, Context, Delivery, Outcome};
use jetevents::provision::StreamSpec;
use tokio::sync::Mutex;
use tokio::time::{Interval, MissedTickBehavior};
use tower::{Layer, Service};

#[path = "shared/events.rs"]
mod events;
use events::{Fate, OrderPlaced};

/// Lets at most one event a tick into the handlers, across all of them: a
/// downstream that takes two calls a second gets two calls a second.
///
/// It waits inside the consumer's timeout and in-progress acks (see the
/// layer order in `jetevents::consume`), so waiting here neither lets an
/// event's ack wait run out nor outlasts the handler timeout.
#[derive(Clone)]
struct RateLimitLayer {
    ticks: Arc<Mutex<Interval>>,
}

impl RateLimitLayer {
    fn every(period: Duration) -> Self {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            ticks: Arc::new(Mutex::new(ticks)),
        }
    }
}

impl<Inner> Layer<Inner> for RateLimitLayer {
    type Service = RateLimit<Inner>;
    fn layer(&self, inner: Inner) -> Self::Service {
        RateLimit {
            inner,
            ticks: self.ticks.clone(),
        }
    }
}

#[derive(Clone)]
struct RateLimit<Inner> {
    inner: Inner,
    ticks: Arc<Mutex<Interval>>,
}

impl<S, Inner> Service<Delivery<S>> for RateLimit<Inner>
where
    S: Send + 'static,
    Inner: Service<Delivery<S>, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    Inner::Future: Send,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, delivery: Delivery<S>) -> Self::Future {
        // tower's way: call the service that was made ready, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ticks = self.ticks.clone();
        Box::pin(async move {
            ticks.lock().await.tick().await;
            inner.call(delivery).await
        })
    }
}

/// A pretend payment call: the gateway turns away flaky orders the first
/// time with a 429 and a Retry-After.
async fn on_order_placed(order: OrderPlaced, ctx: Context) -> Outcome {
    if order.fate == Fate::FlakyOnce && ctx.delivery_count() == 1 {
        println!("throttled {}", order.order_id);
        return Outcome::retry_after(Duration::from_secs(3));
    }
    println!(
        "handled {} delivery={}",
        order.order_id,
        ctx.delivery_count()
    );
    Outcome::ack()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::from_env()?;
    config.source = "/demo/middleware".into();
    let client = Client::connect(config).await?;
    let spec = StreamSpec::for_domain(client.subjects(), events::STREAM, events::DOMAIN)?;
    client.ensure_stream(&spec).await?;

    let consumer = Consumer::builder(&client, "payments")
        .stream(events::STREAM)
        .handle(on_order_placed)
        // A route layer runs inside the consumer's layers: a call that
        // waited for its turn below still has its whole 10 s.
        .route_layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(10)))
        .layer(RateLimitLayer::every(Duration::from_millis(500)))
        .build()
        .await?;
    println!("consumer started");
    consumer.run().await?;
    client.close().await;
    Ok(())
}
