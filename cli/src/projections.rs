//! `projections status | rebuild`: where each projection's checkpoint
//! stands against its event store, and resetting it so its runners apply
//! every event again.
//!
//! The checkpoints are read and reset through the library's
//! `KvCheckpoints`, which is generic over the projection: the command
//! names a placeholder projection that never applies an event.

use std::process::ExitCode;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::TryStreamExt;
use jetevents::client::Client;
use jetevents::error::BoxError;
use jetevents::eventstore::projection::{Checkpoints, KvCheckpoints, Projected, Projection};
use jetevents::eventstore::Aggregate;
use serde::Serialize;

use crate::cli::{OutputFormat, ProjectionLocation, ProjectionsStatusArgs, RebuildArgs};
use crate::failure::Failure;
use crate::render::{json_line, Table};

/// Stands in for the service's projection: the command only reads and
/// resets checkpoints, it never applies events or touches the model.
struct Placeholder;

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

impl Projection for Placeholder {
    type Aggregate = NoAggregate;
    type Model = ();

    async fn apply(&mut self, _: &mut (), _: &Projected<NoAggregate>) -> Result<(), BoxError> {
        Err("the command line does not apply events".into())
    }

    /// The model is the service's: a rebuild from here resets the
    /// checkpoint only.
    async fn clear(&mut self, _: &mut ()) -> Result<(), BoxError> {
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

async fn bucket(client: &Client, location: &ProjectionLocation) -> Result<kv::Store, Failure> {
    crate::stream::jetstream(client)?
        .get_key_value(&location.bucket)
        .await
        .map_err(|err| Failure::during(&format!("checkpoint bucket {}", location.bucket), err))
}

/// The projections with a checkpoint in the bucket, sorted.
async fn names(bucket: &kv::Store, location: &ProjectionLocation) -> Result<Vec<String>, Failure> {
    let mut names: Vec<String> = bucket
        .keys()
        .await
        .map_err(|err| Failure::during(&format!("listing {}", location.bucket), err))?
        .try_collect()
        .await
        .map_err(|err| Failure::during(&format!("listing {}", location.bucket), err))?;
    names.sort();
    Ok(names)
}

/// Projection `name`'s checkpoint store; an unknown name is an error (the
/// library would read it as a projection that applied nothing yet).
async fn checkpoints(
    bucket: &kv::Store,
    location: &ProjectionLocation,
    name: &str,
) -> Result<KvCheckpoints<()>, Failure> {
    if !names(bucket, location)
        .await?
        .iter()
        .any(|known| known == name)
    {
        return Err(Failure::new(format!(
            "no projection {name:?} in checkpoint bucket {}",
            location.bucket
        )));
    }
    Ok(KvCheckpoints::new(bucket.clone(), name, ()))
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
    let bucket = bucket(client, &args.location).await?;
    let names = match &args.projection {
        Some(name) => vec![name.clone()],
        None => names(&bucket, &args.location).await?,
    };
    let last_sequence = last_sequence(client, &args).await?;
    let mut statuses = Vec::new();
    for name in names {
        let mut store = checkpoints(&bucket, &args.location, &name).await?;
        let checkpoint = Checkpoints::<Placeholder>::checkpoint(&mut store).await?;
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
    let bucket = bucket(client, &args.location).await?;
    let mut store = checkpoints(&bucket, &args.location, &args.projection).await?;
    let before = Checkpoints::<Placeholder>::checkpoint(&mut store).await?;
    Checkpoints::<Placeholder>::reset(&mut store, &mut Placeholder).await?;
    println!(
        "Projection {}: checkpoint {before} -> 0; its runners apply every event again.",
        args.projection
    );
    Ok(ExitCode::SUCCESS)
}
