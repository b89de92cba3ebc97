//! `dlq`: the dead-letter stream through the library's [`DeadLetters`].

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jetevents::client::Client;
use jetevents::consume::dead_letter::{DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX};
use jetevents::consume::{
    DeadLetter, DeadLetterConfig, DeadLetterErrorKind, DeadLetterReason, DeadLetters,
};
use serde_json::{json, Value};

use crate::cli::{DlqCriteria, DlqListArgs, DlqSelectArgs, DlqShowArgs, OutputFormat};
use crate::failure::Failure;
use crate::filter::Glob;
use crate::render::{cloudevent_json, data_text, json_line, Table};

/// Which dead-letter stream.
#[derive(Debug, Args)]
pub struct DeadLetterLocation {
    /// The dead-letter stream.
    #[arg(long, default_value = DEFAULT_STREAM)]
    pub dlq_stream: String,
    /// The first subject token of its entries.
    #[arg(long, default_value = DEFAULT_SUBJECT_PREFIX)]
    pub dlq_prefix: String,
}

impl DeadLetterLocation {
    pub fn dead_letters(&self, client: &Client) -> DeadLetters {
        DeadLetters::with_config(
            client,
            DeadLetterConfig::new(self.dlq_stream.clone(), self.dlq_prefix.clone()),
        )
    }
}

/// The criteria, checked before any request.
struct Selection {
    reason: Option<DeadLetterReason>,
    consumer: Option<String>,
    type_glob: Option<Glob>,
    since: Option<DateTime<Utc>>,
}

impl Selection {
    fn new(criteria: &DlqCriteria) -> Result<Self, Failure> {
        let reason = match criteria.reason.as_deref() {
            None => None,
            Some(text) => match text
                .parse::<DeadLetterReason>()
                .unwrap_or_else(|never| match never {})
            {
                DeadLetterReason::Other(other) => {
                    return Err(Failure::new(format!(
                        "unknown reason {other:?}: permanent, attempts_exhausted, undecodable, unhandled or undeliverable"
                    )))
                }
                reason => Some(reason),
            },
        };
        Ok(Self {
            reason,
            consumer: criteria.consumer.clone(),
            type_glob: criteria.type_glob.as_deref().map(Glob::parse).transpose()?,
            since: criteria
                .since
                .as_deref()
                .map(crate::duration::parse_since)
                .transpose()
                .map_err(Failure::new)?,
        })
    }

    fn matches(&self, entry: &DeadLetter) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == entry.reason)
            && self
                .since
                .is_none_or(|since| entry.time.is_some_and(|t| t >= since))
            && self.type_glob.as_ref().is_none_or(|glob| {
                entry
                    .envelope()
                    .is_ok_and(|event| glob.matches(&event.event_type))
            })
    }

    /// Every matching entry, oldest first; none when nothing was ever
    /// dead-lettered (the stream is created with the first entry).
    async fn entries(&self, dead_letters: &DeadLetters) -> Result<Vec<DeadLetter>, Failure> {
        let listed = match &self.consumer {
            Some(consumer) => dead_letters.list_for_consumer(consumer, usize::MAX).await,
            None => dead_letters.list(usize::MAX).await,
        };
        match listed {
            Ok(entries) => Ok(entries.into_iter().filter(|e| self.matches(e)).collect()),
            Err(err) if matches!(err.kind(), DeadLetterErrorKind::NoStream) => Ok(Vec::new()),
            Err(err) => Err(Failure::during("listing dead letters", err)),
        }
    }
}

/// Dead letters of `consumer` since `since`: for `groups`.
pub async fn count_since(
    dead_letters: &DeadLetters,
    consumer: &str,
    since: DateTime<Utc>,
) -> Result<usize, Failure> {
    let selection = Selection {
        reason: None,
        consumer: Some(consumer.to_owned()),
        type_glob: None,
        since: Some(since),
    };
    Ok(selection.entries(dead_letters).await?.len())
}

pub async fn list(dead_letters: &DeadLetters, args: DlqListArgs) -> Result<ExitCode, Failure> {
    let selection = Selection::new(&args.criteria)?;
    let entries = selection.entries(dead_letters).await?;
    let entries = entries.iter().take(args.limit);
    match args.output {
        OutputFormat::Json => {
            for entry in entries {
                json_line(&entry_json(entry)?)?;
            }
        }
        OutputFormat::Table => {
            let mut table = Table::new(vec![
                "SEQ",
                "TIME",
                "REASON",
                "CONSUMER",
                "TYPE",
                "SUBJECT",
                "DELIVERIES",
                "ERROR",
            ]);
            for entry in entries {
                table.push(vec![
                    entry.sequence.to_string(),
                    time_text(entry.time),
                    entry.reason.to_string(),
                    entry.consumer.clone(),
                    entry
                        .envelope()
                        .map(|e| e.event_type)
                        .unwrap_or_else(|_| "UNDECODABLE".to_owned()),
                    entry.original_subject.clone(),
                    entry.delivery_count.to_string(),
                    shortened(&entry.error, 80),
                ]);
            }
            table.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(dead_letters: &DeadLetters, args: DlqShowArgs) -> Result<ExitCode, Failure> {
    let entry = dead_letters
        .get(args.sequence)
        .await
        .map_err(|err| Failure::during(&format!("dead letter {}", args.sequence), err))?;
    if args.output == OutputFormat::Json {
        json_line(&entry_json(&entry)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let event = entry.envelope();
    let mut table = Table::new(vec!["FIELD", "VALUE"]);
    let rows = [
        ("sequence", entry.sequence.to_string()),
        ("reason", entry.reason.to_string()),
        ("error", entry.error.clone()),
        ("consumer", entry.consumer.clone()),
        ("dead-lettered", time_text(entry.time)),
        ("deliveries", entry.delivery_count.to_string()),
        ("original stream", entry.original_stream.clone()),
        ("original sequence", entry.original_sequence.to_string()),
        ("original subject", entry.original_subject.clone()),
    ];
    for (field, value) in rows {
        table.push(vec![field.to_owned(), value]);
    }
    match &event {
        Ok(event) => {
            table.push(vec!["type".to_owned(), event.event_type.clone()]);
            table.push(vec!["id".to_owned(), event.id.clone()]);
            table.push(vec!["source".to_owned(), event.source.clone()]);
            table.push(vec!["data".to_owned(), data_text(event.data.as_deref())]);
        }
        Err(err) => {
            table.push(vec!["decode error".to_owned(), err.to_string()]);
            table.push(vec!["payload".to_owned(), data_text(Some(&entry.payload))]);
        }
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn redrive(dead_letters: &DeadLetters, args: DlqSelectArgs) -> Result<ExitCode, Failure> {
    let sequences = selected(dead_letters, &args).await?;
    let progress = progress_bar(sequences.len(), "redriving");
    let mut skipped = 0;
    for sequence in &sequences {
        match dead_letters.redrive(*sequence).await {
            Ok(_) => {}
            // Gone since it was listed or named: redriven or deleted by an
            // earlier, interrupted run or by someone else.
            Err(err) if matches!(err.kind(), DeadLetterErrorKind::NotFound(_)) => skipped += 1,
            Err(err) => {
                progress.abandon();
                return Err(Failure::during(
                    &format!("redriving dead letter {sequence}"),
                    err,
                ));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!(
        "redriven: {}, not found: {skipped}",
        sequences.len() - skipped
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(dead_letters: &DeadLetters, args: DlqSelectArgs) -> Result<ExitCode, Failure> {
    let sequences = selected(dead_letters, &args).await?;
    let progress = progress_bar(sequences.len(), "deleting");
    let mut skipped = 0;
    for sequence in &sequences {
        match dead_letters.delete(*sequence).await {
            Ok(()) => {}
            Err(err) if matches!(err.kind(), DeadLetterErrorKind::NotFound(_)) => skipped += 1,
            Err(err) => {
                progress.abandon();
                return Err(Failure::during(
                    &format!("deleting dead letter {sequence}"),
                    err,
                ));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    println!(
        "deleted: {}, not found: {skipped}",
        sequences.len() - skipped
    );
    Ok(ExitCode::SUCCESS)
}

/// The sequences named, or with `--all` those matching the criteria.
async fn selected(dead_letters: &DeadLetters, args: &DlqSelectArgs) -> Result<Vec<u64>, Failure> {
    let selection = Selection::new(&args.criteria)?;
    if !args.all {
        return Ok(args.sequences.clone());
    }
    Ok(selection
        .entries(dead_letters)
        .await?
        .iter()
        .map(|entry| entry.sequence)
        .collect())
}

/// A bar on stderr; indicatif draws nothing when stderr is not a terminal.
fn progress_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

fn entry_json(entry: &DeadLetter) -> Result<Value, Failure> {
    let event = match entry.envelope() {
        Ok(event) => cloudevent_json(&event)?,
        Err(_) => Value::Null,
    };
    Ok(json!({
        "sequence": entry.sequence,
        "reason": entry.reason.as_str(),
        "error": entry.error,
        "consumer": entry.consumer,
        "time": entry.time.map(|t| t.to_rfc3339()),
        "deliveries": entry.delivery_count,
        "failed_runs": entry.failed_runs,
        "original_stream": entry.original_stream,
        "original_sequence": entry.original_sequence,
        "original_subject": entry.original_subject,
        "event": event,
    }))
}

fn time_text(time: Option<DateTime<Utc>>) -> String {
    time.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn shortened(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}
