//! `groups`: the health of every consumer group (durable consumer), with a
//! verdict an operator can act on.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use jetevents::client::Client;
use serde::Serialize;

use crate::cli::{GroupsArgs, OutputFormat};
use crate::failure::Failure;
use crate::render::{json_line, Table};
use crate::stream::chrono_time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    Lagging,
    Stalled,
}

#[derive(Debug, Serialize)]
struct GroupHealth {
    stream: String,
    group: String,
    pending: u64,
    ack_pending: usize,
    redelivered: usize,
    waiting_pulls: usize,
    last_activity: Option<DateTime<Utc>>,
    dead_letters_last_hour: usize,
    verdict: Verdict,
}

pub async fn run(client: &Client, args: GroupsArgs) -> Result<ExitCode, Failure> {
    let streams = if args.streams.is_empty() {
        event_streams(client, &args.location.dlq_stream).await?
    } else {
        args.streams.clone()
    };
    let dead_letters = args.location.dead_letters(client);
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    let mut groups = Vec::new();
    for name in &streams {
        let stream = crate::stream::open(client, name).await?;
        let infos: Vec<consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .map_err(|err| Failure::during(&format!("listing the groups of {name}"), err))?;
        for info in infos
            .into_iter()
            .filter(|i| i.config.durable_name.is_some())
        {
            let last_activity = last_activity(&info);
            groups.push(GroupHealth {
                stream: name.clone(),
                verdict: verdict(&info, last_activity, args.lag_threshold, args.stall_after),
                dead_letters_last_hour: crate::dlq::count_since(
                    &dead_letters,
                    &info.name,
                    hour_ago,
                )
                .await?,
                group: info.name,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting_pulls: info.num_waiting,
                last_activity,
            });
        }
    }
    groups.sort_by(|a, b| (&a.stream, &a.group).cmp(&(&b.stream, &b.group)));
    match args.output {
        OutputFormat::Json => {
            for group in &groups {
                json_line(group)?;
            }
        }
        OutputFormat::Table => print_table(&groups)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Every stream but the dead-letter one and the KV and object stores'.
async fn event_streams(client: &Client, dlq_stream: &str) -> Result<Vec<String>, Failure> {
    let names: Vec<String> = crate::stream::jetstream(client)?
        .stream_names()
        .try_collect()
        .await
        .map_err(|err| Failure::during("listing streams", err))?;
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n != dlq_stream && !n.starts_with("KV_") && !n.starts_with("OBJ_"))
        .collect();
    names.sort();
    Ok(names)
}

/// The last delivery or ack; the creation time when there was none, so a
/// new group is not stalled before it had the chance to pull.
fn last_activity(info: &consumer::Info) -> Option<DateTime<Utc>> {
    [
        info.delivered.last_active,
        info.ack_floor.last_active,
        Some(info.created),
    ]
    .into_iter()
    .flatten()
    .filter_map(chrono_time)
    .max()
}

fn verdict(
    info: &consumer::Info,
    last_activity: Option<DateTime<Utc>>,
    lag_threshold: u64,
    stall_after: Duration,
) -> Verdict {
    let waiting = info.num_pending + info.num_ack_pending as u64;
    let idle = last_activity
        .and_then(|t| (Utc::now() - t).to_std().ok())
        .unwrap_or(Duration::MAX);
    if waiting > 0 && idle >= stall_after {
        Verdict::Stalled
    } else if info.num_pending > lag_threshold {
        Verdict::Lagging
    } else {
        Verdict::Healthy
    }
}

fn print_table(groups: &[GroupHealth]) -> Result<(), Failure> {
    let mut table = Table::new(vec![
        "STREAM",
        "GROUP",
        "PENDING",
        "ACK PENDING",
        "REDELIVERED",
        "WAITING PULLS",
        "LAST ACTIVITY",
        "DLQ 1H",
        "VERDICT",
    ]);
    for group in groups {
        let ago = group
            .last_activity
            .and_then(|t| (Utc::now() - t).to_std().ok())
            .map(|idle| {
                format!(
                    "{} ago",
                    crate::duration::format(Duration::from_secs(idle.as_secs()))
                )
            })
            .unwrap_or_else(|| "never".to_owned());
        table.push(vec![
            group.stream.clone(),
            group.group.clone(),
            group.pending.to_string(),
            group.ack_pending.to_string(),
            group.redelivered.to_string(),
            group.waiting_pulls.to_string(),
            ago,
            group.dead_letters_last_hour.to_string(),
            format!("{:?}", group.verdict).to_lowercase(),
        ]);
    }
    table.print()
}
