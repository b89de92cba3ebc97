//! `tail`: a stream's events, decoded, through an ephemeral consumer that
//! acknowledges nothing (it leaves no trace on the groups' positions).

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Message;
use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::codec;
use jetevents::Envelope;

use crate::cli::{OutputFormat, TailArgs};
use crate::failure::Failure;
use crate::filter::{check_subject_pattern, EventFilter};
use crate::render::{cloudevent_json, data_text, json_line, trace_id};

/// The server drops the ephemeral consumer this long after the command stops.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

pub async fn run(client: &Client, args: TailArgs) -> Result<ExitCode, Failure> {
    let (filter, since) = args.filter.check(args.key.clone())?;
    if let Some(subject) = &args.subject {
        check_subject_pattern(subject)?;
    }
    let stream = crate::stream::open(client, &args.stream).await?;
    let deliver_policy = match (args.since_sequence, since) {
        (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
        (None, Some(time)) => DeliverPolicy::ByStartTime {
            start_time: crate::stream::offset_time(time)?,
        },
        (None, None) => DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: args.subject.clone().unwrap_or_default(),
            inactive_threshold: INACTIVE_THRESHOLD,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|err| Failure::during(&format!("reading stream {}", args.stream), err))?;
    let printer = Printer {
        output: args.output,
        trace_url: args.trace_url.clone(),
    };
    printer.header();
    // Without --follow, stop at the end of what the stream holds now.
    if !args.follow && consumer.cached_info().num_pending == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| Failure::during(&format!("reading stream {}", args.stream), err))?;
    let mut shown = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = &mut interrupted => break,
        };
        let Some(message) = next else { break };
        let message = message.map_err(|err| Failure::during("reading", err))?;
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(err) => return Err(Failure::during("reading message metadata", err)),
        };
        if printer.show(&message, sequence, &filter)? {
            shown += 1;
        }
        if args.limit.is_some_and(|limit| shown >= limit) || (!args.follow && pending == 0) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Printer {
    output: OutputFormat,
    trace_url: Option<String>,
}

impl Printer {
    fn header(&self) {
        if self.output == OutputFormat::Table {
            let trace = if self.trace_url.is_some() {
                "TRACE  "
            } else {
                ""
            };
            println!(
                "{:>6}  {:<20}  {:<34}  {:<18}  {:<44}  {:<36}  {trace}DATA",
                "SEQ", "TIME", "TYPE", "SOURCE", "SUBJECT", "ID"
            );
        }
    }

    /// Prints the message if it passes the filter; undecodable messages are
    /// shown as such (unless a filter needs their attributes).
    fn show(
        &self,
        message: &Message,
        sequence: u64,
        filter: &EventFilter,
    ) -> Result<bool, Failure> {
        match codec::decode(message.headers.as_ref(), &message.payload) {
            Ok(envelope) if filter.matches(&envelope) => {
                self.event(sequence, &message.subject, &envelope)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(_) if filter.reads_attributes() => Ok(false),
            Err(err) => {
                self.undecodable(sequence, &message.subject, &err.to_string())?;
                Ok(true)
            }
        }
    }

    fn event(&self, sequence: u64, subject: &str, envelope: &Envelope) -> Result<(), Failure> {
        if self.output == OutputFormat::Json {
            return json_line(&cloudevent_json(envelope)?);
        }
        let time = envelope
            .time
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let trace = match &self.trace_url {
            None => String::new(),
            Some(template) => {
                let link = envelope
                    .traceparent()
                    .and_then(trace_id)
                    .map(|id| template.replace("{trace_id}", id))
                    .unwrap_or_else(|| "-".to_owned());
                format!("{link}  ")
            }
        };
        println!(
            "{sequence:>6}  {time:<20}  {:<34}  {:<18}  {subject:<44}  {:<36}  {trace}{}",
            envelope.event_type,
            envelope.source,
            envelope.id,
            data_text(envelope.data.as_deref())
        );
        Ok(())
    }

    fn undecodable(&self, sequence: u64, subject: &str, error: &str) -> Result<(), Failure> {
        if self.output == OutputFormat::Json {
            return json_line(&serde_json::json!({
                "undecodable": true,
                "stream_sequence": sequence,
                "subject": subject,
                "error": error,
            }));
        }
        println!(
            "{sequence:>6}  {:<20}  {:<34}  {:<18}  {subject:<44}  {error}",
            "", "UNDECODABLE", ""
        );
        Ok(())
    }
}
