//! The SQLite ledger read model the projection tests share: one row per
//! applied event, so an event applied twice shows as two rows.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use jetevents::error::BoxError;
use jetevents::eventstore::projection::sqlx::{self, sqlite::SqliteConnectOptions, SqlitePool};
use jetevents::eventstore::projection::{
    Projected, Projection, ProjectionRunner, SqliteCheckpoints,
};
use jetevents::eventstore::{EventStore, Expected};
use tokio::sync::mpsc;

use crate::eventstore_support::support::eventually;
use crate::eventstore_support::{deposits, Account, AccountEvent};

const WAIT: Duration = Duration::from_secs(20);

/// A ledger's runner.
pub type LedgerRunner = ProjectionRunner<Ledger, SqliteCheckpoints>;

/// One row per applied event, tagged with the runner that applied it. No
/// unique key: an event applied twice is two rows.
#[derive(Debug)]
pub struct Ledger {
    runner: String,
    /// Hangs on this apply call of the run (1-based) after saying so, so
    /// the test aborts the runner in the middle of a batch.
    pub hang_at: Option<(usize, mpsc::UnboundedSender<()>)>,
    /// Time each apply takes, so a runner killed from outside is likely to
    /// be in the middle of a batch.
    pub work: Duration,
    applied: usize,
}

impl Ledger {
    pub fn new(runner: impl Into<String>) -> Ledger {
        Ledger {
            runner: runner.into(),
            hang_at: None,
            work: Duration::ZERO,
            applied: 0,
        }
    }
}

impl Projection for Ledger {
    type Aggregate = Account;
    type Model = sqlx::SqliteConnection;

    async fn apply(
        &mut self,
        model: &mut sqlx::SqliteConnection,
        event: &Projected<Account>,
    ) -> Result<(), BoxError> {
        let amount = match event.event {
            AccountEvent::Deposited { amount } => amount as i64,
            _ => 0,
        };
        sqlx::query("INSERT INTO ledger (sequence, account, amount, runner) VALUES (?, ?, ?, ?)")
            .bind(event.sequence as i64)
            .bind(&event.key)
            .bind(amount)
            .bind(&self.runner)
            .execute(&mut *model)
            .await?;
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        self.applied += 1;
        if let Some((at, hung)) = &self.hang_at {
            if self.applied == *at {
                hung.send(()).unwrap();
                std::future::pending::<()>().await;
            }
        }
        Ok(())
    }

    async fn clear(&mut self, model: &mut sqlx::SqliteConnection) -> Result<(), BoxError> {
        sqlx::query("DELETE FROM ledger").execute(model).await?;
        Ok(())
    }
}

/// The read model's database in `dir`, its table created.
pub async fn database(dir: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("read.db"))
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS ledger \
         (sequence INTEGER NOT NULL, account TEXT NOT NULL, amount INTEGER NOT NULL, runner TEXT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// Every row as (sequence, account, amount, runner), by sequence.
pub async fn rows(pool: &SqlitePool) -> Vec<(i64, String, i64, String)> {
    sqlx::query_as("SELECT sequence, account, amount, runner FROM ledger ORDER BY sequence, rowid")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Opens `accounts` accounts and deposits `per_account` amounts in each,
/// ten per append; returns how many events that stored.
pub async fn write_events(store: &EventStore, accounts: usize, per_account: u64) -> usize {
    let mut stored = 0;
    for account in 0..accounts {
        let key = format!("acc-{account}");
        let opened = AccountEvent::Opened {
            owner: "ada".into(),
        };
        store
            .append::<Account>(&key, vec![opened], Expected::Any)
            .await
            .unwrap();
        stored += 1;
        let amounts: Vec<u64> = (1..=per_account).collect();
        for chunk in amounts.chunks(10) {
            store
                .append::<Account>(&key, deposits(chunk.iter().copied()), Expected::Any)
                .await
                .unwrap();
            stored += chunk.len();
        }
    }
    stored
}

pub async fn sqlite_runner(store: &EventStore, pool: &SqlitePool, ledger: Ledger) -> LedgerRunner {
    let checkpoints = SqliteCheckpoints::new(pool.clone(), "ledger")
        .await
        .unwrap();
    ProjectionRunner::new(store.clone(), ledger, checkpoints).batch_size(7)
}

pub async fn wait_for_rows(pool: &SqlitePool, count: usize) {
    eventually("the read model to catch up", WAIT, || async {
        rows(pool).await.len() >= count
    })
    .await;
}

/// Each event exactly once (one row per stream sequence).
pub fn assert_exactly_once(rows: &[(i64, String, i64, String)], events: usize) {
    let mut sequences: Vec<i64> = rows.iter().map(|row| row.0).collect();
    sequences.dedup();
    assert_eq!(sequences.len(), rows.len(), "an event was applied twice");
    assert_eq!(rows.len(), events, "rows vs events");
}
