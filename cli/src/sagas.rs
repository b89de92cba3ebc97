//! `sagas list | show`: the running sagas and one by correlation id, read
//! through the library's `saga::Sagas` with the state as plain JSON.

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use jetevents::client::Client;
use jetevents::saga::{PendingTimeout, SagaStatus, SagaSummary, Sagas};
use serde::Serialize;
use serde_json::Value;

use crate::cli::{OutputFormat, SagaShowArgs, SagasListArgs};
use crate::failure::Failure;
use crate::render::{json_line, Table};

/// The library keeps saga `{name}` in bucket `SAGA_{name}` (stream
/// `KV_SAGA_{name}`) and its finished ones in `SAGA_{name}_DONE`.
const STREAM_PREFIX: &str = "KV_SAGA_";
const ARCHIVE_SUFFIX: &str = "_DONE";

#[derive(Debug, Serialize)]
struct SagaView {
    saga: String,
    correlation_id: String,
    status: SagaStatus,
    state: Value,
    pending_timeouts: BTreeMap<String, PendingTimeout>,
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl SagaView {
    fn new(saga: &str, summary: SagaSummary<Value>) -> Self {
        Self {
            saga: saga.to_owned(),
            correlation_id: summary.correlation_id,
            status: summary.status,
            state: summary.state,
            pending_timeouts: summary.pending_timeouts,
            started_at: summary.started_at,
            updated_at: summary.updated_at,
        }
    }
}

/// Every saga definition with a bucket on the server, sorted.
async fn saga_names(client: &Client) -> Result<Vec<String>, Failure> {
    let streams: Vec<String> = crate::stream::jetstream(client)?
        .stream_names()
        .try_collect()
        .await
        .map_err(|err| Failure::during("listing streams", err))?;
    let mut names: Vec<String> = streams
        .iter()
        .filter_map(|stream| stream.strip_prefix(STREAM_PREFIX))
        .filter(|name| !name.ends_with(ARCHIVE_SUFFIX))
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

/// The sagas of `name`, which must exist: `Sagas::open` would create its
/// buckets.
async fn open(client: &Client, name: &str) -> Result<Sagas<Value>, Failure> {
    if crate::stream::find(client, &format!("{STREAM_PREFIX}{name}"))
        .await?
        .is_none()
    {
        return Err(Failure::new(format!("no saga {name:?} on the server")));
    }
    Ok(Sagas::open(client, name).await?)
}

pub async fn list(client: &Client, args: SagasListArgs) -> Result<ExitCode, Failure> {
    let names = match &args.saga {
        Some(name) => vec![name.clone()],
        None => saga_names(client).await?,
    };
    let mut views = Vec::new();
    for name in &names {
        let mut running = open(client, name).await?.running().await?;
        running.sort_by_key(|saga| saga.started_at);
        views.extend(
            running
                .into_iter()
                .map(|summary| SagaView::new(name, summary)),
        );
    }
    match args.output {
        OutputFormat::Json => {
            for view in &views {
                json_line(view)?;
            }
        }
        OutputFormat::Table => {
            let mut table = Table::new(vec![
                "SAGA",
                "CORRELATION ID",
                "STARTED",
                "UPDATED",
                "NEXT TIMEOUT",
                "STATE",
            ]);
            for view in &views {
                table.push(vec![
                    view.saga.clone(),
                    view.correlation_id.clone(),
                    time(view.started_at),
                    time(view.updated_at),
                    next_timeout(&view.pending_timeouts),
                    view.state.to_string(),
                ]);
            }
            table.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(client: &Client, args: SagaShowArgs) -> Result<ExitCode, Failure> {
    let summary = open(client, &args.saga)
        .await?
        .get(&args.correlation_id)
        .await?
        .ok_or_else(|| {
            Failure::new(format!(
                "no saga {:?} with correlation id {:?}",
                args.saga, args.correlation_id
            ))
        })?;
    let view = SagaView::new(&args.saga, summary);
    match args.output {
        OutputFormat::Json => json_line(&view)?,
        OutputFormat::Table => {
            let status = match &view.status {
                SagaStatus::Compensated { reason } => format!("compensated: {reason}"),
                other => serde_json::to_value(other)?
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
            };
            println!("saga            {}", view.saga);
            println!("correlation id  {}", view.correlation_id);
            println!("status          {status}");
            println!("started         {}", time(view.started_at));
            println!("updated         {}", time(view.updated_at));
            for (timer, timeout) in &view.pending_timeouts {
                println!("timeout         {timer} at {}", time(timeout.at));
            }
            println!(
                "state           {}",
                serde_json::to_string_pretty(&view.state)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The earliest pending timeout, as `timer at time`.
fn next_timeout(timeouts: &BTreeMap<String, PendingTimeout>) -> String {
    timeouts
        .iter()
        .min_by_key(|(_, timeout)| timeout.at)
        .map(|(timer, timeout)| format!("{timer} at {}", time(timeout.at)))
        .unwrap_or_else(|| "-".to_owned())
}
