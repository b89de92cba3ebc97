//! Typed request-reply: a pricing service with two instances, a caller, and
//! what discovery shows.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example request_reply
//! ```
//!
//! Prints the quotes (and which instance gave each), a typed remote error, a
//! typed timeout from a slow sku (the endpoint sees the caller's deadline),
//! the endpoints `$SRV.INFO` lists with their request schema, then "no
//! responders" once both instances stopped. `JETEVENTS_TRACE_STDOUT=1` prints
//! the spans: each `call` and its `process` share a trace.

use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::service::{CallErrorKind, Context, EndpointError, REQUEST_SCHEMA};
use jetevents::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[path = "shared/telemetry.rs"]
mod telemetry;

/// Asks for the price of a sku.
#[derive(Serialize, Deserialize, JsonSchema)]
struct QuoteRequested {
    /// The stock-keeping unit.
    sku: String,
}

impl Event for QuoteRequested {
    const TYPE: &'static str = "pricing.quote.requested.v1";
}

/// The price, and which instance answered.
#[derive(Serialize, Deserialize, JsonSchema)]
struct QuoteGiven {
    cents: u64,
    instance: String,
}

impl Event for QuoteGiven {
    const TYPE: &'static str = "pricing.quote.given.v1";
}

async fn quote(request: QuoteRequested, ctx: Context<String>) -> Result<QuoteGiven, EndpointError> {
    match request.sku.as_str() {
        "unknown" => Err(EndpointError::new(404, "no such sku")),
        "slow" => {
            println!("  endpoint: caller gives me {:?}", ctx.remaining());
            // Works past the deadline: the endpoint answers 504 at it.
            tokio::time::sleep(Duration::from_secs(60)).await;
            Err(EndpointError::new(500, "unreachable"))
        }
        sku => Ok(QuoteGiven {
            cents: 100 * sku.len() as u64,
            instance: ctx.state().clone(),
        }),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = telemetry::init("demo-pricing", "error");
    let mut config = Config::from_env()?;
    config.source = "/demo/pricing".into();
    let client = Client::connect(config).await?;

    let mut instances = Vec::new();
    for instance in ["pricing-a", "pricing-b"] {
        let running = client
            .service("pricing", "1.0.0")
            .description("quotes prices")
            .with_state(instance.to_owned())
            .endpoint(quote)
            .start()
            .await?;
        instances.push(running);
    }

    for sku in ["apple", "kiwi", "banana", "fig"] {
        let answer: QuoteGiven = client.call(&QuoteRequested { sku: sku.into() }).await?;
        println!("{sku}: {} cents from {}", answer.cents, answer.instance);
    }
    let unknown = QuoteRequested {
        sku: "unknown".into(),
    };
    if let Err(err) = client.call::<_, QuoteGiven>(&unknown).await {
        println!("unknown: {err}");
    }
    let slow = QuoteRequested { sku: "slow".into() };
    let caller = client.caller().timeout(Duration::from_millis(500));
    if let Err(err) = caller.call::<_, QuoteGiven>(&slow).await {
        println!(
            "slow: {err} (timed out: {})",
            err.kind() == &CallErrorKind::TimedOut
        );
    }

    if let Ok(info) = instances[0].info().await {
        for endpoint in &info.endpoints {
            println!(
                "discovery: {} on {}, request schema {}",
                endpoint.name, endpoint.subject, endpoint.metadata[REQUEST_SCHEMA]
            );
        }
    }

    for running in instances {
        running.stop().await;
    }
    if let Err(err) = client
        .call::<_, QuoteGiven>(&QuoteRequested { sku: "fig".into() })
        .await
    {
        println!("after stop: {err}");
    }
    client.close().await;
    telemetry.shutdown();
    Ok(())
}
