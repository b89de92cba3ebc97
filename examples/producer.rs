//! Publishes `count` typed events at `rate` events per second (0: as fast as
//! the pipeline goes), one of them flaky and one poison when `count` >= 3, so
//! the demo consumer shows a retry and a dead letter.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example producer -- 20 10
//! ```

use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::provision::StreamSpec;

#[path = "shared/events.rs"]
mod events;
#[path = "shared/telemetry.rs"]
mod telemetry;
use events::{Fate, OrderPlaced};
use tracing::Instrument;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // JETEVENTS_TRACE_STDOUT=1 prints every span (see shared/telemetry.rs).
    let telemetry = telemetry::init("demo-producer", "warn");
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let rate: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(0.0);

    let mut config = Config::from_env()?;
    config.source = "/demo/producer".into();
    let client = Client::connect(config).await?;
    let spec = StreamSpec::for_domain(client.subjects(), events::STREAM, events::DOMAIN)?;
    client.ensure_stream(&spec).await?;
    let publisher = client.publisher();

    let orders: Vec<OrderPlaced> = (0..count)
        .map(|n| OrderPlaced {
            order_id: format!("order-{n:05}"),
            amount_cents: 100 + n as u64,
            fate: match n {
                1 if count >= 3 => Fate::FlakyOnce,
                2 if count >= 3 => Fate::Poison,
                _ => Fate::Normal,
            },
        })
        .collect();

    let started = Instant::now();
    if rate > 0.0 {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut ticker = tokio::time::interval(interval);
        for order in &orders {
            ticker.tick().await;
            // The application's own span: the publish span is its child, and
            // the consumers' spans continue the same trace.
            let receipt = publisher
                .publish(order)
                .instrument(tracing::info_span!("place order", order.id = %order.order_id))
                .await?;
            println!(
                "published {} fate={:?} seq={}",
                order.order_id, order.fate, receipt.sequence
            );
        }
    } else {
        let results = publisher
            .publish_many(&orders, 256)
            .instrument(tracing::info_span!("place orders", count))
            .await;
        for (order, result) in orders.iter().zip(results) {
            let receipt = result?;
            println!(
                "published {} fate={:?} seq={}",
                order.order_id, order.fate, receipt.sequence
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "producer done: {count} events in {:.3}s ({:.0}/s)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    client.close().await;
    telemetry.shutdown();
    Ok(())
}
