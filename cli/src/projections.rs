//! `projections status | rebuild`: where each projection's checkpoint
//! stands against its event store, and resetting it so its runners apply
//! every event again.
//!
//! The checkpoints are read and reset through the library's
//! `KvCheckpoints` and `SqliteCheckpoints`, which are generic over the
//! projection: the command names a placeholder projection that never
//! applies an event.

use std::marker::PhantomData;
use std::path::Path;
use std::process::ExitCode;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::TryStreamExt;
use jetevents::client::Client;
use jetevents::error::BoxError;
use jetevents::eventstore::projection::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use jetevents::eventstore::projection::sqlx::{self, SqliteConnection};
use jetevents::eventstore::projection::{
    Checkpoints, KvCheckpoints, Projected, Projection, SqliteCheckpoints,
};
use jetevents::eventstore::Aggregate;
use serde::Serialize;

use crate::cli::{OutputFormat, ProjectionLocation, ProjectionsStatusArgs, RebuildArgs};
use crate::failure::Failure;
use crate::render::{json_line, Table};

/// Stands in for the service's projection (whose model is `M`): the
/// command only reads and resets checkpoints, it never applies events or
/// touches the model.
struct Placeholder<M: ?Sized>(PhantomData<fn(&M)>);

impl<M: ?Sized> Placeholder<M> {
    fn new() -> Self {
        Self(PhantomData)
    }
}

#[derive(Default)]
struct NoAggregate;

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl Aggregate for NoAggregate {
    const KIND: &'static str = "jetevents.cli";
    type Event = serde_json::Value;
    type Command = ();
    type Error = Never;
    fn apply(&mut self, _: &serde_json::Value) {}
    fn handle(&self, _: &()) -> Result<Vec<serde_json::Value>, Never> {
        Ok(Vec::new())
    }
}

impl<M: ?Sized + Send + 'static> Projection for Placeholder<M> {
    type Aggregate = NoAggregate;
    type Model = M;

    async fn apply(&mut self, _: &mut M, _: &Projected<NoAggregate>) -> Result<(), BoxError> {
        Err("the command line does not apply events".into())
    }

    /// The model is the service's: a rebuild from here resets the
    /// checkpoint only.
    async fn clear(&mut self, _: &mut M) -> Result<(), BoxError> {
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct ProjectionStatus {
    projection: String,
    checkpoint: u64,
    last_sequence: u64,
    lag: u64,
}

/// Where the checkpoints are.
enum CheckpointStore {
    // Boxed: a KV handle is large next to a pool.
    Kv {
        bucket: Box<kv::Store>,
        name: String,
    },
    Sqlite {
        pool: SqlitePool,
        path: String,
    },
}

impl CheckpointStore {
    async fn open(client: &Client, location: &ProjectionLocation) -> Result<Self, Failure> {
        match (&location.bucket, &location.sqlite) {
            (Some(bucket), _) => Ok(Self::Kv {
                bucket: Box::new(
                    crate::stream::jetstream(client)?
                        .get_key_value(bucket)
                        .await
                        .map_err(|err| {
                            Failure::during(&format!("checkpoint bucket {bucket}"), err)
                        })?,
                ),
                name: bucket.clone(),
            }),
            (None, Some(path)) => Self::sqlite(path).await,
            (None, None) => Err(Failure::new("give --bucket or --sqlite")),
        }
    }

    async fn sqlite(path: &Path) -> Result<Self, Failure> {
        let shown = path.display().to_string();
        // Never create a database: a wrong path is an error, not an empty one.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false);
        let pool = SqlitePool::connect_with(options)
            .await
            .map_err(|err| Failure::during(&format!("database {shown}"), err))?;
        Ok(Self::Sqlite { pool, path: shown })
    }

    fn describe(&self) -> String {
        match self {
            Self::Kv { name, .. } => format!("checkpoint bucket {name}"),
            Self::Sqlite { path, .. } => format!("database {path}"),
        }
    }

    /// The projections with a checkpoint, sorted.
    async fn names(&self) -> Result<Vec<String>, Failure> {
        let listing = |err| Failure::during(&format!("listing {}", self.describe()), err);
        let mut names: Vec<String> = match self {
            Self::Kv { bucket, .. } => bucket
                .keys()
                .await
                .map_err(|err| listing(err.to_string()))?
                .try_collect()
                .await
                .map_err(|err| listing(err.to_string()))?,
            Self::Sqlite { pool, .. } => {
                sqlx::query_scalar("SELECT projection FROM jetevents_checkpoints")
                    .fetch_all(pool)
                    .await
                    .map_err(|err| listing(err.to_string()))?
            }
        };
        names.sort();
        Ok(names)
    }

    /// Projection `name`'s checkpoint; an unknown name is an error (the
    /// library would read it as a projection that applied nothing yet).
    async fn checkpoint(&self, name: &str) -> Result<u64, Failure> {
        self.known(name).await?;
        Ok(match self {
            Self::Kv { bucket, .. } => {
                let mut store = KvCheckpoints::new(bucket.as_ref().clone(), name, ());
                Checkpoints::<Placeholder<()>>::checkpoint(&mut store).await?
            }
            Self::Sqlite { pool, .. } => {
                let mut store = SqliteCheckpoints::new(pool.clone(), name).await?;
                Checkpoints::<Placeholder<SqliteConnection>>::checkpoint(&mut store).await?
            }
        })
    }

    /// Sets projection `name`'s checkpoint back to 0.
    async fn reset(&self, name: &str) -> Result<(), Failure> {
        self.known(name).await?;
        match self {
            Self::Kv { bucket, .. } => {
                let mut store = KvCheckpoints::new(bucket.as_ref().clone(), name, ());
                Checkpoints::reset(&mut store, &mut Placeholder::<()>::new()).await?;
            }
            Self::Sqlite { pool, .. } => {
                let mut store = SqliteCheckpoints::new(pool.clone(), name).await?;
                Checkpoints::reset(&mut store, &mut Placeholder::<SqliteConnection>::new()).await?;
            }
        }
        Ok(())
    }

    async fn known(&self, name: &str) -> Result<(), Failure> {
        if self.names().await?.iter().any(|known| known == name) {
            Ok(())
        } else {
            Err(Failure::new(format!(
                "no projection {name:?} in {}",
                self.describe()
            )))
        }
    }
}

/// The stream sequence of the last event the projections read: of the
/// aggregate type `kind` when given, of the whole store otherwise.
async fn last_sequence(client: &Client, args: &ProjectionsStatusArgs) -> Result<u64, Failure> {
    let mut stream = crate::stream::open(client, &args.store).await?;
    let Some(kind) = &args.kind else {
        return Ok(stream.info().await?.state.last_sequence);
    };
    match stream
        .direct_get_last_for_subject(format!("{}.{kind}.*.*.*", client.subjects().env()))
        .await
    {
        Ok(message) => Ok(message.sequence),
        Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(0),
        Err(err) => Err(Failure::during(&format!("stream {}", args.store), err)),
    }
}

pub async fn status(client: &Client, args: ProjectionsStatusArgs) -> Result<ExitCode, Failure> {
    let store = CheckpointStore::open(client, &args.location).await?;
    let names = match &args.projection {
        Some(name) => vec![name.clone()],
        None => store.names().await?,
    };
    let last_sequence = last_sequence(client, &args).await?;
    let mut statuses = Vec::new();
    for name in names {
        let checkpoint = store.checkpoint(&name).await?;
        statuses.push(ProjectionStatus {
            projection: name,
            checkpoint,
            last_sequence,
            lag: last_sequence.saturating_sub(checkpoint),
        });
    }
    match args.output {
        OutputFormat::Json => {
            for status in &statuses {
                json_line(status)?;
            }
        }
        OutputFormat::Table => {
            let mut table = Table::new(vec!["PROJECTION", "CHECKPOINT", "LAST EVENT", "LAG"]);
            for status in statuses {
                table.push(vec![
                    status.projection,
                    status.checkpoint.to_string(),
                    status.last_sequence.to_string(),
                    status.lag.to_string(),
                ]);
            }
            table.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(client: &Client, args: RebuildArgs) -> Result<ExitCode, Failure> {
    let store = CheckpointStore::open(client, &args.location).await?;
    let before = store.checkpoint(&args.projection).await?;
    store.reset(&args.projection).await?;
    println!(
        "Projection {}: checkpoint {before} -> 0; its runners apply every event again.",
        args.projection
    );
    Ok(ExitCode::SUCCESS)
}
