//! An event-sourced bank account: commands decided on the state rebuilt
//! from its events, appended atomically at the version they were decided
//! on, with snapshots every 10 events.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example eventstore
//! ```

use async_nats::jetstream::kv;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::eventstore::{
    Aggregate, CommandErrorKind, EventStore, SnapshotPolicy, Snapshots, StoreStream,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: i64,
}

#[derive(Serialize, Deserialize)]
enum AccountEvent {
    #[serde(rename = "opened.v1")]
    Opened,
    #[serde(rename = "deposited.v1")]
    Deposited { amount: i64 },
    #[serde(rename = "withdrawn.v1")]
    Withdrawn { amount: i64 },
}

enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the account is not open")]
    NotOpen,
    #[error("insufficient funds: balance {balance}, asked {asked}")]
    InsufficientFunds { balance: i64, asked: i64 },
}

impl Aggregate for Account {
    const KIND: &'static str = "bank.account";
    type Event = AccountEvent;
    type Command = AccountCommand;
    type Error = Refusal;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Refusal> {
        match command {
            AccountCommand::Open if self.open => Ok(vec![]),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => Err(Refusal::NotOpen),
            AccountCommand::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw(amount) if *amount > self.balance => {
                Err(Refusal::InsufficientFunds {
                    balance: self.balance,
                    asked: *amount,
                })
            }
            AccountCommand::Withdraw(amount) => {
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(Config::from_env()?).await?;
    let jetstream = client.jetstream().ok_or("needs a NATS connection")?;
    let bucket = jetstream
        .create_or_update_key_value(kv::Config {
            bucket: "bank_snapshots".into(),
            ..Default::default()
        })
        .await?;
    let store = EventStore::provision(&client, StoreStream::new("BANK", "bank"))
        .await?
        .with_snapshots(Snapshots::new(bucket, SnapshotPolicy::EveryEvents(10)));

    let key = format!("acc-{}", uuid::Uuid::now_v7().simple());
    for command in [
        AccountCommand::Open,
        AccountCommand::Deposit(100),
        AccountCommand::Withdraw(30),
        AccountCommand::Withdraw(500),
    ] {
        match store.execute::<Account>(&key, &command, 5).await {
            Ok(done) => println!(
                "{key}: version {} balance {}",
                done.version, done.state.balance
            ),
            Err(err) => match err.kind() {
                CommandErrorKind::Refused(refusal) => println!("{key}: refused: {refusal}"),
                _ => return Err(err.into()),
            },
        }
    }
    let loaded = store.load::<Account>(&key).await?;
    println!(
        "{key} loaded: {:?} at version {}",
        loaded.state, loaded.version
    );
    Ok(())
}
