//! Helpers of the request-reply tests (`tests/service_*.rs`).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use crate::support::{eventually, unique};

use jetevents::client::Client;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The request most tests send: `pricing.quote.requested.v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuoteRequested {
    pub sku: String,
}

impl jetevents::Event for QuoteRequested {
    const TYPE: &'static str = "pricing.quote.requested.v1";
}

/// Its answer; `instance` says which instance answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct QuoteGiven {
    pub cents: u64,
    pub instance: String,
}

impl jetevents::Event for QuoteGiven {
    const TYPE: &'static str = "pricing.quote.given.v1";
}

pub fn quote(sku: &str) -> QuoteRequested {
    QuoteRequested {
        sku: sku.to_owned(),
    }
}

/// A client on the shared server in an environment of its own, so tests do
/// not answer each other's requests.
pub async fn client() -> Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let server = crate::support::shared_server().await;
    crate::support::connect(&server.url(), &unique("env"), |config| {
        config.source = "/service-tests".to_owned()
    })
    .await
}

/// The raw NATS connection of `client`, to ask the `$SRV` subjects.
pub fn nats(client: &Client) -> &async_nats::Client {
    client.nats().unwrap()
}

/// The single answer of the `$SRV.{verb}.{service}` request, as JSON.
pub async fn ask_service<T: serde::de::DeserializeOwned>(
    client: &Client,
    verb: &str,
    service: &str,
) -> T {
    let reply = nats(client)
        .request(format!("$SRV.{verb}.{service}"), "".into())
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}
