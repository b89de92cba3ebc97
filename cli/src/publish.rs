//! `publish`: one event from JSON data, typed by `--type`, keyed by `--key`.

use std::io::Read;
use std::process::ExitCode;

use jetevents::client::Client;
use jetevents::codec::{Encoding, APPLICATION_JSON};
use jetevents::publish::PublishOptions;
use jetevents::{Envelope, EventType};

use crate::cli::{EncodingArg, OutputFormat, PublishArgs};
use crate::failure::Failure;
use crate::render::{json_line, Table};

pub async fn run(client: &Client, args: PublishArgs) -> Result<ExitCode, Failure> {
    let event_type = EventType::parse(&args.event_type)
        .map_err(|err| Failure::during(&format!("--type {:?}", args.event_type), err))?;
    let data = read_data(&args)?;
    let subject = client
        .subjects()
        .event(&event_type, args.key.as_deref())
        .map_err(|err| Failure::during("building the subject", err))?;

    let source = args
        .source
        .clone()
        .unwrap_or_else(|| client.config().source.clone());
    let mut envelope = Envelope::new(source, event_type.as_str());
    envelope.data_content_type = Some(APPLICATION_JSON.to_owned());
    envelope.data = Some(data.into());
    if let Some(key) = &args.key {
        envelope.set_partition_key(key.clone());
    }
    let mut options = PublishOptions::new();
    if let Some(id) = &args.id {
        options = options.id(id.clone());
    }
    if let Some(correlation_id) = &args.correlation_id {
        options = options.correlation_id(correlation_id.clone());
    }
    if let Some(encoding) = args.encoding {
        options = options.encoding(match encoding {
            EncodingArg::Binary => Encoding::Binary,
            EncodingArg::Structured => Encoding::Structured,
        });
    }
    let receipt = client
        .publisher()
        .publish_envelope(&subject, envelope, options)
        .await
        .map_err(|err| Failure::during(&format!("publishing on {subject}"), err))?;

    match args.output {
        OutputFormat::Json => json_line(&serde_json::json!({
            "event_id": receipt.event_id,
            "subject": receipt.subject,
            "stream": receipt.stream,
            "sequence": receipt.sequence,
            "duplicate": receipt.duplicate,
        }))?,
        OutputFormat::Table => {
            let mut table = Table::new(vec!["STREAM", "SEQ", "SUBJECT", "ID", "DUPLICATE"]);
            table.push(vec![
                receipt.stream,
                receipt.sequence.to_string(),
                receipt.subject,
                receipt.event_id,
                receipt.duplicate.to_string(),
            ]);
            table.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The data, from the argument, a file or standard input, checked to be JSON
/// (sent compact, as the library sends serde types).
fn read_data(args: &PublishArgs) -> Result<Vec<u8>, Failure> {
    let (origin, text) = match (&args.file, args.data.as_deref()) {
        (Some(path), _) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .map_err(|err| Failure::during(&format!("reading {}", path.display()), err))?,
        ),
        (None, Some("-")) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|err| Failure::during("reading standard input", err))?;
            ("standard input".to_owned(), text)
        }
        (None, Some(data)) => ("the data argument".to_owned(), data.to_owned()),
        (None, None) => {
            return Err(Failure::new(
                "no data: give it as an argument, with --file, or `-` for standard input",
            ))
        }
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| Failure::during(&format!("{origin} is not valid JSON"), err))?;
    Ok(serde_json::to_vec(&json)?)
}
