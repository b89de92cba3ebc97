//! The aggregate and the store the event store tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::stream::StorageType;
use jetevents::client::Client;
use jetevents::eventstore::{Aggregate, EventStore, StoreStream};
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
        let version = message
            .headers
            .as_ref()
            .and_then(|h| h.get(jetevents::eventstore::VERSION_HEADER))
            .map(|v| v.as_str().parse().unwrap())
            .unwrap_or(0);
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
