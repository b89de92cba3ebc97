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
use jetevents::eventstore::{CommandErrorKind, EventStore, SnapshotPolicy, Snapshots, StoreStream};

#[path = "shared/account.rs"]
mod account;
use account::{Account, AccountCommand};

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
