//! The aggregate and the store the event store tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::stream::StorageType;
use jetevents::client::Client;
use jetevents::eventstore::{Aggregate, EventStore, SnapshotPolicy, Snapshots, StoreStream};
use serde::{Deserialize, Serialize};

#[path = "../support/mod.rs"]
pub mod support;
pub use support::{connect, shared_server, unique};

/// A bank account: its state records every amount, in order, so two
/// states are equal only when the same events were applied in the same
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
    pub amounts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    #[serde(rename = "opened.v1")]
    Opened { owner: String },
    #[serde(rename = "deposited.v1")]
    Deposited { amount: u64 },
    #[serde(rename = "closed.v1")]
    Closed,
}

pub enum AccountCommand {
    Open,
    Deposit(Vec<u64>),
}

#[derive(Debug, thiserror::Error)]
#[error("account is not open")]
pub struct NotOpen;

impl Aggregate for Account {
    const KIND: &'static str = "bank.account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = NotOpen;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { .. } => self.open = true,
            AccountEvent::Deposited { amount } => {
                self.balance += amount;
                self.amounts.push(*amount);
            }
            AccountEvent::Closed => self.open = false,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, NotOpen> {
        match command {
            AccountCommand::Open if self.open => Ok(vec![]),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened {
                owner: "ada".into(),
            }]),
            AccountCommand::Deposit(_) if !self.open => Err(NotOpen),
            AccountCommand::Deposit(amounts) => Ok(amounts
                .iter()
                .map(|&amount| AccountEvent::Deposited { amount })
                .collect()),
        }
    }
}

pub fn deposits(amounts: impl IntoIterator<Item = u64>) -> Vec<AccountEvent> {
    amounts
        .into_iter()
        .map(|amount| AccountEvent::Deposited { amount })
        .collect()
}

/// Where a case runs: the same cases run on both (see [`on_both_backends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The shared nats-server of the test binary.
    Nats,
    /// A new in-memory JetStream (`jetevents::testing`).
    Memory,
}

/// A client in a fresh environment and a store on a fresh stream, on either
/// backend.
pub struct World {
    pub client: Client,
    pub store: EventStore,
    /// The in-memory JetStream; `None` on the real server.
    memory: Option<jetevents::testing::MemoryJetStream>,
}

impl World {
    /// A fresh world on `on` (file storage on the server).
    pub async fn fresh(on: Backend) -> World {
        World::fresh_in(on, StorageType::File).await
    }

    /// A fresh world on `on`; `storage` applies to the server's stream.
    pub async fn fresh_in(on: Backend, storage: StorageType) -> World {
        match on {
            Backend::Nats => {
                let (client, store) = fresh_store_in(storage).await;
                World {
                    client,
                    store,
                    memory: None,
                }
            }
            Backend::Memory => {
                let memory = jetevents::testing::MemoryJetStream::new();
                let config = jetevents::config::Config::default()
                    .with_env(unique("es"))
                    .with_source("/tests");
                let client = Client::in_memory(config, &memory).unwrap();
                let store = EventStore::provision(&client, StoreStream::new(unique("ES"), "bank"))
                    .await
                    .unwrap();
                World {
                    client,
                    store,
                    memory: Some(memory),
                }
            }
        }
    }

    /// Snapshots in a fresh bucket of this world, saved by `policy`.
    pub async fn snapshots(&self, policy: SnapshotPolicy) -> Snapshots {
        Snapshots::provision(&self.client, &unique("snap"), policy)
            .await
            .unwrap()
    }

    /// Deletes the store's stream and provisions it again, empty, its
    /// sequences starting at 1 again (snapshot buckets stay); a fresh store
    /// on it, as after a restart.
    pub async fn recreate_stream(&self) -> EventStore {
        let name = self.store.stream();
        match &self.memory {
            Some(memory) => memory.delete_stream(name).unwrap(),
            None => {
                self.client
                    .jetstream()
                    .unwrap()
                    .delete_stream(name)
                    .await
                    .unwrap();
            }
        }
        EventStore::provision(&self.client, StoreStream::new(name, "bank"))
            .await
            .unwrap()
    }

    /// The id of the event stored at `sequence`: its `Nats-Msg-Id`, which
    /// the store sets to its CloudEvents id.
    pub async fn event_id_at(&self, sequence: u64) -> String {
        let headers = match &self.memory {
            Some(memory) => memory
                .messages(self.store.stream())
                .into_iter()
                .find(|message| message.sequence == sequence)
                .expect("no message at that sequence")
                .headers
                .unwrap(),
            None => {
                let jetstream = self.client.jetstream().unwrap();
                let stream = jetstream.get_stream(self.store.stream()).await.unwrap();
                stream.direct_get(sequence).await.unwrap().headers
            }
        };
        headers.get("Nats-Msg-Id").unwrap().as_str().to_owned()
    }

    /// Every message of the aggregate `key` as (sequence, subject, version).
    pub async fn stored(&self, key: &str) -> Vec<(u64, String, u64)> {
        let Some(memory) = &self.memory else {
            return stored_messages(&self.client, &self.store, key).await;
        };
        let suffix = format!(".{key}");
        memory
            .messages(self.store.stream())
            .into_iter()
            .filter(|message| message.subject.ends_with(&suffix))
            .map(|message| {
                let version = version_of(message.headers.as_ref());
                (message.sequence, message.subject, version)
            })
            .collect()
    }
}

/// The aggregate version an event's headers carry (0: none).
fn version_of(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(jetevents::eventstore::VERSION_HEADER))
        .map(|v| v.as_str().parse().unwrap())
        .unwrap_or(0)
}

/// Each case `name(on: Backend)` of the calling file as two tests,
/// `nats::name` on the shared nats-server and `memory::name` on the
/// in-memory JetStream (the conformance suite's pattern: a case is written
/// once and cannot drift between the transports).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::eventstore_support::Backend::Nats).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::eventstore_support::Backend::Memory).await;
                }
            )*
        }
    };
}

/// A client in a fresh environment and a store on a fresh stream for it.
pub async fn fresh_store() -> (Client, EventStore) {
    fresh_store_in(StorageType::File).await
}

/// [`fresh_store`] on `storage`.
pub async fn fresh_store_in(storage: StorageType) -> (Client, EventStore) {
    fresh_store_with(storage, |_| {}).await
}

/// [`fresh_store`] on `storage`, the client's config changed by `adjust`.
pub async fn fresh_store_with(
    storage: StorageType,
    adjust: impl FnOnce(&mut jetevents::config::Config),
) -> (Client, EventStore) {
    let server = shared_server().await;
    let client = connect(&server.url(), &unique("es"), adjust).await;
    let mut stream = StoreStream::new(unique("ES"), "bank");
    stream.storage = storage;
    let store = EventStore::provision(&client, stream).await.unwrap();
    (client, store)
}

/// A fresh KV bucket named after `prefix`.
pub async fn kv_bucket(client: &Client, prefix: &str) -> async_nats::jetstream::kv::Store {
    client
        .jetstream()
        .unwrap()
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: unique(prefix),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Every message of the aggregate `key` as (subject, version header).
pub async fn stored_messages(
    client: &Client,
    store: &EventStore,
    key: &str,
) -> Vec<(u64, String, u64)> {
    use futures_util::StreamExt;
    let jetstream = client.jetstream().unwrap();
    let stream = jetstream.get_stream(store.stream()).await.unwrap();
    let filter = format!("{}.bank.account.*.*.{key}", client.subjects().env());
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let info = message.info().unwrap();
        let (sequence, remaining) = (info.stream_sequence, info.pending);
        let version = version_of(message.headers.as_ref());
        out.push((sequence, message.subject.to_string(), version));
        if remaining == 0 {
            break;
        }
    }
    out
}

/// Runs `runner` until its checkpoint has reached the stream's last event,
/// then stops it and gives it back.
pub async fn run_until_caught_up<P, C>(
    mut runner: jetevents::eventstore::projection::ProjectionRunner<P, C>,
) -> jetevents::eventstore::projection::ProjectionRunner<P, C>
where
    P: jetevents::eventstore::projection::Projection + Sync,
    C: jetevents::eventstore::projection::Checkpoints<P> + Sync + 'static,
{
    let progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let outcome = runner.run(async {
            let _ = stopped.await;
        });
        outcome.await.unwrap();
        runner
    });
    support::eventually(
        "the projection to catch up",
        std::time::Duration::from_secs(20),
        || async {
            let progress = *progress.borrow();
            progress.checkpoint > 0 && progress.lag() == 0
        },
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap()
}
