//! Helpers of the consumer integration tests (`tests/consume_*.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// A name unique in this process, safe as a subject token and stream name.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's world: its own environment, event stream and dead-letter
/// stream, so tests on the shared server do not see each other.
pub struct World {
    pub client: Client,
    pub stream: String,
    pub dead_letters: DeadLetterConfig,
}

impl World {
    pub async fn on_shared_server() -> World {
        let server = jetevents_testcontainers::shared().await;
        World::on(&server.url()).await
    }

    pub async fn on(url: &str) -> World {
        // Runner warnings show with a failing test's output (RUST_LOG to
        // see more). A test that installed its own subscriber keeps it.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let env = unique("env");
        let client = connect(url, &env).await;
        let stream = unique("SHOP");
        let spec = StreamSpec::for_domain(client.subjects(), &stream, "shop").unwrap();
        client.ensure_stream(&spec).await.unwrap();
        let dead_letters = DeadLetterConfig {
            stream: unique("DL"),
            subject_prefix: unique("dl"),
        };
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

    pub fn subject_of(&self, n: u64) -> String {
        format!(
            "{}.shop.order.placed.v1.o-{n}",
            self.client.subjects().env()
        )
    }

    /// Consumer info of `group`: (pending, ack pending).
    pub async fn consumer_counts(&self, group: &str) -> (u64, usize) {
        let stream = self
            .client
            .jetstream()
            .get_stream(&self.stream)
            .await
            .unwrap();
        let info = stream.consumer_info(group).await.unwrap();
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

// `Config` is non-exhaustive: no struct literal outside the crate.
#[allow(clippy::field_reassign_with_default)]
pub async fn connect(url: &str, env: &str) -> Client {
    let mut config = Config::default();
    config.servers = vec![url.to_owned()];
    config.env = env.to_owned();
    config.source = "/consume-tests".to_owned();
    Client::connect(config).await.unwrap()
}

/// Polls `check` until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
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

/// A running consumer and the trigger of its shutdown.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), jetevents::consume::ConsumeError>>,
}

impl Running {
    pub fn start<S: Clone + Send + Sync + 'static>(
        consumer: jetevents::consume::Consumer<S>,
    ) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the runner to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("runner did not stop")
            .unwrap()
            .unwrap();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
