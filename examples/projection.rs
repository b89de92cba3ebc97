//! A projection of bank accounts into SQLite: balances as rows, the
//! checkpoint in the same transaction, one active runner per projection
//! (a KV lease). SQLite is bundled and in memory: only a NATS server is
//! needed.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example projection --features sqlite
//! ```

use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::error::BoxError;
use jetevents::eventstore::projection::sqlx::{self, sqlite::SqlitePoolOptions, SqliteConnection};
use jetevents::eventstore::projection::{
    Lease, Projected, Projection, ProjectionRunner, SqliteCheckpoints,
};
use jetevents::eventstore::{EventStore, StoreStream};

#[path = "shared/account.rs"]
mod account;
use account::{Account, AccountCommand, AccountEvent};

/// One row per account with its balance.
struct Balances;

impl Projection for Balances {
    type Aggregate = Account;
    type Model = SqliteConnection;

    async fn apply(
        &mut self,
        model: &mut SqliteConnection,
        event: &Projected<Account>,
    ) -> Result<(), BoxError> {
        let change = match event.event {
            AccountEvent::Opened => 0,
            AccountEvent::Deposited { amount } => amount,
            AccountEvent::Withdrawn { amount } => -amount,
        };
        sqlx::query(
            "INSERT INTO balances (account, balance) VALUES (?, ?) \
             ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
        )
        .bind(&event.key)
        .bind(change)
        .execute(model)
        .await?;
        Ok(())
    }

    async fn clear(&mut self, model: &mut SqliteConnection) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM balances").execute(model).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(Config::from_env()?).await?;
    let store = EventStore::provision(&client, StoreStream::new("BANK", "bank")).await?;

    // One connection that never closes: an in-memory database lives as long
    // as its connection.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await?;
    sqlx::query("CREATE TABLE balances (account TEXT PRIMARY KEY, balance INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    let checkpoints = SqliteCheckpoints::new(pool.clone(), "balances").await?;
    let lease =
        Lease::provision(&client, "bank_leases", "balances", Duration::from_secs(3)).await?;
    let mut runner = ProjectionRunner::new(store.clone(), Balances, checkpoints).with_lease(lease);
    let mut progress = runner.progress();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let key = format!("acc-{}", uuid::Uuid::now_v7().simple());
    for command in [
        AccountCommand::Open,
        AccountCommand::Deposit(100),
        AccountCommand::Withdraw(30),
    ] {
        store.execute::<Account>(&key, &command, 5).await?;
    }
    let written = store.load::<Account>(&key).await?.sequence;

    // The read model follows: wait until the checkpoint passes our last event.
    progress
        .wait_for(|progress| progress.checkpoint >= written)
        .await?;
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM balances WHERE account = ?")
        .bind(&key)
        .fetch_one(&pool)
        .await?;
    let progress = *progress.borrow();
    println!(
        "{key}: balance {balance} in SQLite, checkpoint {}, lag {}",
        progress.checkpoint,
        progress.lag()
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
