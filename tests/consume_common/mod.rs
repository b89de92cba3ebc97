//! Helpers of the consumer integration tests (`tests/consume_*.rs`).
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub use crate::support::{eventually, unique, Running};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::consume::{DeadLetterConfig, DeadLetters};
use jetevents::provision::StreamSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The event most tests use: `shop.order.placed.v1`, keyed by order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: String,
    pub n: u64,
}

impl jetevents::Event for OrderPlaced {
    const TYPE: &'static str = "shop.order.placed.v1";
    fn key(&self) -> Option<String> {
        Some(self.order.clone())
    }
}

/// A follow-up event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order: String,
}

impl jetevents::Event for OrderShipped {
    const TYPE: &'static str = "shop.order.shipped.v1";
    fn key(&self) -> Option<String> {
        Some(self.order.clone())
    }
}

pub fn order(n: u64) -> OrderPlaced {
    OrderPlaced {
        order: format!("o-{n}"),
        n,
    }
}

/// One test's world: its own environment, event stream and dead-letter
/// stream, so tests on the shared server do not see each other.
pub struct World {
    pub client: Client,
    pub stream: String,
    pub dead_letters: DeadLetterConfig,
}

impl World {
    /// A consumer builder of `group` on this world's stream and dead letters.
    pub fn consumer(&self, group: &str) -> jetevents::consume::ConsumerBuilder<()> {
        jetevents::consume::Consumer::builder(&self.client, group)
            .stream(&self.stream)
            .dead_letter(self.dead_letters.clone())
    }

    pub async fn on_shared_server() -> World {
        let server = jetevents_testcontainers::shared().await;
        World::on(&server.url()).await
    }

    pub async fn on(url: &str) -> World {
        let env = unique("env");
        World::provision(connect(url, &env).await).await
    }

    /// A world on `client` (a connected one or the test kit's): its own
    /// event stream and dead-letter names.
    pub async fn provision(client: Client) -> World {
        // Runner warnings show with a failing test's output (RUST_LOG to
        // see more). A test that installed its own subscriber keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let stream = unique("SHOP");
        let spec = StreamSpec::for_domain(client.subjects(), &stream, "shop").unwrap();
        client.ensure_stream(&spec).await.unwrap();
        let dead_letters = DeadLetterConfig::new(unique("DL"), unique("dl"));
        World {
            client,
            stream,
            dead_letters,
        }
    }

    pub fn dead_letter_api(&self) -> DeadLetters {
        DeadLetters::with_config(&self.client, self.dead_letters.clone())
    }

    pub async fn publish(&self, n: u64) -> String {
        self.client
            .publisher()
            .publish(&order(n))
            .await
            .unwrap()
            .event_id
    }

    /// Publishes the follow-up type `shop.order.shipped.v1` of `order`.
    pub async fn publish_shipped(&self, order: &str) {
        self.client
            .publisher()
            .publish(&OrderShipped {
                order: order.to_owned(),
            })
            .await
            .unwrap();
    }

    pub fn subject_of(&self, n: u64) -> String {
        format!(
            "{}.shop.order.placed.v1.o-{n}",
            self.client.subjects().env()
        )
    }

    /// This world's event stream.
    pub async fn stream(
        &self,
    ) -> async_nats::jetstream::stream::Stream<async_nats::jetstream::stream::Info> {
        self.client
            .jetstream()
            .unwrap()
            .get_stream(&self.stream)
            .await
            .unwrap()
    }

    /// Consumer info of `group`: (pending, ack pending).
    pub async fn consumer_counts(&self, group: &str) -> (u64, usize) {
        let info = self.stream().await.consumer_info(group).await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    /// Waits until `group` has nothing pending and nothing unacked.
    pub async fn wait_settled(&self, group: &str) {
        eventually("consumer settled", Duration::from_secs(20), || async {
            self.consumer_counts(group).await == (0, 0)
        })
        .await;
    }
}

/// A client of the consumer tests (source `/consume-tests`).
pub async fn connect(url: &str, env: &str) -> Client {
    crate::support::connect(url, env, |config| {
        config.source = "/consume-tests".to_owned()
    })
    .await
}

/// What handlers saw, shared with the test.
#[derive(Clone)]
pub struct Log<T>(Arc<Mutex<Vec<T>>>);

impl<T> Default for Log<T> {
    fn default() -> Self {
        Log(Arc::new(Mutex::new(Vec::new())))
    }
}

impl<T: Clone> Log<T> {
    pub fn push(&self, item: T) {
        self.0.lock().unwrap().push(item);
    }
    pub fn items(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}
