//! A demo service: one instance of consumer group `group`, with retry and
//! dead-lettering. Start two with the same group to see the events shared.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example consumer -- billing a
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example consumer -- billing b
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example consumer -- --list-dead-letters
//! ```
//!
//! One line per outcome on stdout, easy to grep:
//! `handled <order> fate=<fate> by=<instance> delivery=<n>`,
//! `retrying <order> ...` and `dead-lettered <order> ...`.
//! Stops cleanly on Ctrl-C or SIGTERM.

use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::consume::{Consumer, Context, DeadLetters, HandlerError, RetryPolicy};
use jetevents::provision::StreamSpec;

#[path = "shared/events.rs"]
mod events;
#[path = "shared/telemetry.rs"]
mod telemetry;
use events::{Fate, OrderPlaced};

/// What every handler call sees.
#[derive(Clone)]
struct Service {
    instance: String,
    retry: RetryPolicy,
}

async fn on_order_placed(order: OrderPlaced, ctx: Context<Service>) -> Result<(), HandlerError> {
    let service = ctx.state();
    let fate = match order.fate {
        Fate::Normal => "normal",
        Fate::FlakyOnce => "flaky_once",
        Fate::Poison => "poison",
    };
    let line = format!(
        "{} fate={fate} by={} delivery={}",
        order.order_id,
        service.instance,
        ctx.delivery_count()
    );
    // Pretend to work, so two instances visibly share the load.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match order.fate {
        Fate::FlakyOnce if ctx.delivery_count() == 1 => {
            let delay = service.retry.initial_delay();
            println!("retrying {line} (payment gateway timeout; retry in about {delay:?})");
            Err(HandlerError::transient("payment gateway timeout"))
        }
        Fate::Poison => {
            println!(
                "dead-lettered {line} (amount {} is not billable)",
                order.amount_cents
            );
            Err(HandlerError::permanent(format!(
                "amount {} is not billable",
                order.amount_cents
            )))
        }
        _ => {
            println!("handled {line}");
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // JETEVENTS_TRACE_STDOUT=1 prints every span (see shared/telemetry.rs).
    let telemetry = telemetry::init("demo-consumer", "error");
    let args: Vec<String> = std::env::args().skip(1).collect();

    let mut config = Config::from_env()?;
    config.source = "/demo/consumer".into();

    if args.first().map(String::as_str) == Some("--list-dead-letters") {
        let client = Client::connect(config).await?;
        let entries = DeadLetters::new(&client).list(100).await?;
        if entries.is_empty() {
            println!("(empty)");
        }
        for entry in entries {
            println!(
                "#{} {} consumer={} deliveries={} subject={} error={:?}",
                entry.sequence,
                entry.reason,
                entry.consumer,
                entry.delivery_count,
                entry.original_subject,
                entry.error
            );
        }
        client.close().await;
        telemetry.shutdown();
        return Ok(());
    }

    let group = args.first().cloned().unwrap_or_else(|| "billing".into());
    let instance = args.get(1).cloned().unwrap_or_else(|| "a".into());
    config.name = Some(format!("demo-consumer-{group}-{instance}"));
    let client = Client::connect(config).await?;
    // Declared on both sides, so either may start first.
    let spec = StreamSpec::for_domain(client.subjects(), events::STREAM, events::DOMAIN)?;
    client.ensure_stream(&spec).await?;

    let retry = RetryPolicy::exponential(Duration::from_millis(500), Duration::from_secs(5))
        .max_attempts(4);
    let consumer = Consumer::builder(&client, &group)
        .stream(events::STREAM)
        .with_state(Service {
            instance: instance.clone(),
            retry: retry.clone(),
        })
        .handle(on_order_placed)
        .retry(retry)
        .concurrency(2)
        // Few events requested ahead, so a small burst spreads over the
        // group's instances; the default (256) favours one busy instance's
        // throughput.
        .prefetch(2)
        .shutdown_grace(Duration::from_secs(5))
        .build()
        .await?;
    println!("consumer {instance} of group {group} started");
    consumer.run().await?;
    println!("consumer {instance} stopped");
    client.close().await;
    telemetry.shutdown();
    Ok(())
}
