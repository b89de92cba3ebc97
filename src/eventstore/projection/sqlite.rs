//! Checkpoints in SQLite, in the same transaction as the read model's rows.

use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{Checkpoints, Projected, Projection, ProjectionError, ProjectionErrorKind};
use crate::Error;

/// A projection's checkpoint as a row of `jetevents_checkpoints` in the
/// SQLite database of its read model.
///
/// Each batch is one transaction: the checkpoint is read, the events after
/// it are applied (the projection writes its rows through the transaction's
/// connection), the checkpoint is moved, and all of it commits or none
/// does. A runner stopped anywhere, or two runners at once, never apply an
/// event twice.
#[derive(Clone, Debug)]
pub struct SqliteCheckpoints {
    pool: SqlitePool,
    name: String,
}

fn store_error(err: impl Into<crate::error::BoxError>) -> ProjectionError {
    Error::with_source(ProjectionErrorKind::Checkpoint, err)
}

impl SqliteCheckpoints {
    /// The checkpoint of projection `name` in `pool`'s database; creates
    /// the checkpoint table if it is missing.
    pub async fn new(
        pool: SqlitePool,
        name: impl Into<String>,
    ) -> Result<SqliteCheckpoints, ProjectionError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS jetevents_checkpoints \
             (projection TEXT PRIMARY KEY NOT NULL, sequence INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(store_error)?;
        Ok(SqliteCheckpoints {
            pool,
            name: name.into(),
        })
    }

    /// The database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` takes the write lock
    /// before the checkpoint is read, so no other writer moves it in between.
    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, ProjectionError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(store_error)
    }

    async fn read(&self, connection: &mut SqliteConnection) -> Result<u64, ProjectionError> {
        let stored: Option<i64> =
            sqlx::query_scalar("SELECT sequence FROM jetevents_checkpoints WHERE projection = ?")
                .bind(&self.name)
                .fetch_optional(connection)
                .await
                .map_err(store_error)?;
        Ok(stored.map_or(0, |sequence| sequence.unsigned_abs()))
    }

    async fn write(
        &self,
        connection: &mut SqliteConnection,
        checkpoint: u64,
    ) -> Result<(), ProjectionError> {
        let checkpoint = i64::try_from(checkpoint).map_err(store_error)?;
        sqlx::query(
            "INSERT INTO jetevents_checkpoints (projection, sequence) VALUES (?, ?) \
             ON CONFLICT (projection) DO UPDATE SET sequence = excluded.sequence",
        )
        .bind(&self.name)
        .bind(checkpoint)
        .execute(connection)
        .await
        .map_err(store_error)?;
        Ok(())
    }
}

impl<P> Checkpoints<P> for SqliteCheckpoints
where
    P: Projection<Model = SqliteConnection>,
{
    async fn checkpoint(&mut self) -> Result<u64, ProjectionError> {
        let mut connection = self.pool.acquire().await.map_err(store_error)?;
        self.read(&mut connection).await
    }

    async fn commit(
        &mut self,
        projection: &mut P,
        events: &[Projected<P::Aggregate>],
    ) -> Result<u64, ProjectionError> {
        let mut transaction = self.begin().await?;
        let read = self.read(&mut transaction).await?;
        let mut checkpoint = read;
        for event in events.iter().filter(|event| event.sequence > read) {
            projection
                .apply(&mut transaction, event)
                .await
                .map_err(|err| {
                    Error::with_source(
                        ProjectionErrorKind::Apply {
                            sequence: event.sequence,
                        },
                        err,
                    )
                })?;
            checkpoint = event.sequence;
        }
        if checkpoint != read {
            self.write(&mut transaction, checkpoint).await?;
        }
        transaction.commit().await.map_err(store_error)?;
        Ok(checkpoint)
    }

    async fn reset(&mut self, projection: &mut P) -> Result<(), ProjectionError> {
        let mut transaction = self.begin().await?;
        projection
            .clear(&mut transaction)
            .await
            .map_err(store_error)?;
        self.write(&mut transaction, 0).await?;
        transaction.commit().await.map_err(store_error)
    }
}
