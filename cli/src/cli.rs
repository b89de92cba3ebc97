//! The command line: every command, flag and help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::connection::ConnectionArgs;
use crate::dlq::DeadLetterLocation;

/// Tail decoded CloudEvents, publish events, work the dead letters, check
/// consumer groups and keep a declared topology in sync.
///
/// Connection settings come from the library's environment variables
/// (NATS_URL, JETEVENTS_ENV, JETEVENTS_TOKEN, ...), the `nats` CLI's
/// selected context when NATS_URL is unset, or --context; flags override both.
#[derive(Debug, Parser)]
#[command(name = "jetevents", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  jetevents tail BOOKING --type 'booking.*.confirmed.*' --since 1h
  jetevents tail BOOKING --follow --output json | jq .data
  jetevents publish --type booking.appointment.confirmed.v1 --key a-1 '{\"id\":\"a-1\"}'
  jetevents dlq list --reason attempts_exhausted --consumer billing
  jetevents dlq redrive --all --consumer billing
  jetevents groups --output json
  jetevents topology plan topology.toml   # exit 0: in sync, 2: changes, 1: error
  jetevents topology permissions topology.yaml --service billing
  jetevents projections status --bucket projections --store BANK --kind bank.account
  jetevents sagas show order o-42
  jetevents completions bash > /etc/bash_completion.d/jetevents";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the decoded events of a stream, oldest first.
    #[command(after_help = "\
Examples:
  jetevents tail BOOKING
  jetevents tail BOOKING --subject 'dev.booking.>' --type '*.confirmed.v1' --key a-1
  jetevents tail BOOKING --since 2026-01-02T03:04:05Z --limit 20
  jetevents tail BOOKING --since-sequence 1200 --follow
  jetevents tail BOOKING --trace-url 'https://jaeger.example/trace/{trace_id}'")]
    Tail(TailArgs),
    /// Publish one event from JSON data and print the receipt.
    #[command(after_help = "\
Examples:
  jetevents publish --type booking.appointment.confirmed.v1 --key a-1 '{\"id\":\"a-1\"}'
  jetevents publish --type iam.user.created.v1 --file user.json --encoding structured
  echo '{\"n\":1}' | jetevents publish --type demo.clock.ticked.v1 -")]
    Publish(PublishArgs),
    /// List, show, redrive and delete dead-lettered events.
    Dlq(DlqArgs),
    /// Health of the consumer groups: backlog, redeliveries, dead letters, verdict.
    #[command(after_help = "\
Verdicts:
  stalled  events wait (pending or unacknowledged) but nothing was delivered or
           acknowledged for --stall-after
  lagging  more than --lag-threshold events wait to be delivered
  healthy  otherwise

Examples:
  jetevents groups
  jetevents groups BOOKING --lag-threshold 10000 --stall-after 10m --output json")]
    Groups(GroupsArgs),
    /// Compare a declared topology (TOML or YAML) with the server, or apply it.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Projections: their checkpoints and lag, and rebuilding them.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Sagas: the running ones and one by correlation id.
    #[command(subcommand)]
    Sagas(SagasCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  jetevents completions zsh > ~/.zfunc/_jetevents")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Table for people, JSON for scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The stream to read.
    pub stream: String,
    /// Only subjects matching this NATS pattern (`*` one token, `>` the rest);
    /// filtered by the server.
    #[arg(long)]
    pub subject: Option<String>,
    #[command(flatten)]
    pub filter: crate::filter::FilterArgs,
    /// Only events with this key (the `partitionkey` extension).
    #[arg(long)]
    pub key: Option<String>,
    /// Start at this stream sequence.
    #[arg(long, conflicts_with = "since")]
    pub since_sequence: Option<u64>,
    /// Keep waiting for new events (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
    /// `table`, or `json`: one structured-mode CloudEvent per line.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Link each event's trace: a URL template where `{trace_id}` is replaced
    /// (table output).
    #[arg(long)]
    pub trace_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The CloudEvents type, `{domain}.{entity}.{action}.{version}`.
    #[arg(long = "type", short = 't')]
    pub event_type: String,
    /// The event's key: last subject token and `partitionkey`.
    #[arg(long, short)]
    pub key: Option<String>,
    /// The CloudEvents source (default: JETEVENTS_SOURCE or the context's).
    #[arg(long)]
    pub source: Option<String>,
    /// The event id (default: a new UUIDv7); publishing the same id again
    /// within the duplicate window stores it once.
    #[arg(long)]
    pub id: Option<String>,
    /// The `correlationid` extension.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Binary (attributes as headers) or structured (one JSON document).
    #[arg(long, value_enum)]
    pub encoding: Option<EncodingArg>,
    /// Read the data from this file.
    #[arg(long, conflicts_with = "data")]
    pub file: Option<PathBuf>,
    /// The data as JSON; `-` reads standard input.
    pub data: Option<String>,
    /// `table` prints one line; `json` the receipt as JSON.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EncodingArg {
    /// `ce-*` headers, data as payload.
    Binary,
    /// `application/cloudevents+json`.
    Structured,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(flatten)]
    pub location: DeadLetterLocation,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List entries, oldest first.
    #[command(after_help = "\
Examples:
  jetevents dlq list
  jetevents dlq list --reason undecodable --since 24h --output json")]
    List(DlqListArgs),
    /// Show one entry: why, where from, headers and data.
    Show(DlqShowArgs),
    /// Publish entries again on their original subject, then delete them.
    ///
    /// Safe to interrupt and run again: an entry whose event was published
    /// but not yet deleted is stored once (the redrive's message id is
    /// derived from the entry).
    #[command(after_help = "\
Examples:
  jetevents dlq redrive 42 43
  jetevents dlq redrive --all --consumer billing --reason attempts_exhausted")]
    Redrive(DlqSelectArgs),
    /// Delete entries.
    Delete(DlqSelectArgs),
}

/// Which entries: by criteria shared by `list`, `redrive` and `delete`.
#[derive(Debug, Args)]
pub struct DlqCriteria {
    /// Only entries with this reason (`permanent`, `attempts_exhausted`,
    /// `undecodable`, `unhandled`, `undeliverable`).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only entries this consumer group gave up on.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only events whose type matches this glob.
    #[arg(long = "type")]
    pub type_glob: Option<String>,
    /// Only entries dead-lettered since this time (RFC 3339) or for this
    /// long (`30m`, `24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub criteria: DlqCriteria,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// The entry's sequence in the dead-letter stream.
    pub sequence: u64,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct DlqSelectArgs {
    /// Entries by sequence.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub sequences: Vec<u64>,
    /// Every entry matching the criteria.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub criteria: DlqCriteria,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Only these streams (default: every stream but the dead-letter one).
    pub streams: Vec<String>,
    /// More events than this waiting to be delivered: lagging.
    #[arg(long, default_value_t = 1000)]
    pub lag_threshold: u64,
    /// Events waiting and no delivery or ack for this long: stalled.
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub stall_after: std::time::Duration,
    #[command(flatten)]
    pub location: DeadLetterLocation,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's checkpoint, the store's last event and the lag.
    #[command(after_help = "\
Examples:
  jetevents projections status --bucket projections --store BANK --kind bank.account
  jetevents projections status totals --bucket projections --store BANK -o json
  jetevents projections status --sqlite read-model.db --store BANK")]
    Status(ProjectionsStatusArgs),
    /// Reset a projection's checkpoint to 0, so its runners apply every event
    /// again.
    #[command(after_help = "\
Stop the projection's runners first. This resets the checkpoint only: a
read model kept in memory is rebuilt when the runners start again; clear a
stored one first (or call ProjectionRunner::rebuild from the service, which
does both).

Example:
  jetevents projections rebuild totals --bucket projections")]
    Rebuild(RebuildArgs),
}

/// Where projections keep their checkpoints: a KV bucket or a SQLite file.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ProjectionLocation {
    /// The KV bucket of the checkpoints (`KvCheckpoints`; key: projection).
    #[arg(long)]
    pub bucket: Option<String>,
    /// The SQLite database of the read model (`SqliteCheckpoints`: table
    /// `jetevents_checkpoints`).
    #[arg(long)]
    pub sqlite: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProjectionsStatusArgs {
    /// Only this projection (default: every one in the bucket).
    pub projection: Option<String>,
    #[command(flatten)]
    pub location: ProjectionLocation,
    /// The event store's stream.
    #[arg(long)]
    pub store: String,
    /// The aggregate type the projections read (`domain.entity`); without
    /// it the lag counts every event of the store.
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection.
    pub projection: String,
    #[command(flatten)]
    pub location: ProjectionLocation,
}

#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// The running sagas: state, pending timeouts, age.
    #[command(after_help = "\
Examples:
  jetevents sagas list
  jetevents sagas list order -o json")]
    List(SagasListArgs),
    /// One saga, running or finished, by correlation id.
    #[command(after_help = "Example:\n  jetevents sagas show order o-42")]
    Show(SagaShowArgs),
}

#[derive(Debug, Args)]
pub struct SagasListArgs {
    /// Only the sagas of this definition (default: every one).
    pub saga: Option<String>,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct SagaShowArgs {
    /// The saga definition's name.
    pub saga: String,
    /// The saga's correlation id.
    pub correlation_id: String,
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Show what apply would change. Exit 0: in sync, 2: changes, 1: error.
    #[command(after_help = "Example:\n  jetevents topology plan topology.toml || test $? -eq 2")]
    Plan(PlanArgs),
    /// Create what is missing and update what may change in place.
    #[command(after_help = "\
Changes the server cannot make in place (a stream's storage or retention, a
group's deliver or ack policy) delete and recreate the stream or group, losing
its data or position: they are refused unless --allow-recreate is given.

Example:\n  jetevents topology apply topology.toml")]
    Apply(ApplyArgs),
    /// Print the NATS permissions of a declared service, as a user entry
    /// for the server's config (or JSON).
    #[command(after_help = "\
The service publishes only its declared event types and reads only its
declared groups; the JetStream API calls its groups, dead letters and
streams need are allowed, nothing else.

Example (topology.toml):
  [[service]]
  name = \"billing\"
  publishes = [\"billing.invoice.issued.v1\"]
  groups = [\"billing\"]          # names of [[group]] entries
  streams = [\"BILLING\"]         # streams it creates itself
  dead_letters = \"DEAD_LETTERS\" # a [[dead_letters]] stream

  jetevents topology permissions topology.toml --service billing
  jetevents topology permissions topology.toml --service billing --nkey UA...")]
    Permissions(PermissionsArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The topology file: `.toml`, `.yaml` or `.yml`.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct PermissionsArgs {
    /// The topology file: `.toml`, `.yaml` or `.yml`.
    pub file: PathBuf,
    /// The declared service.
    #[arg(long)]
    pub service: String,
    /// User name (default: the service's name); the password is read by
    /// the server from `$<USER>_PASSWORD`.
    #[arg(long, conflicts_with = "nkey")]
    pub user: Option<String>,
    /// An nkey user (its public key, `U...`) instead of user and password.
    #[arg(long)]
    pub nkey: Option<String>,
    /// `table`: the config entry; `json`: the subject lists.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The topology file: `.toml`, `.yaml` or `.yml`.
    pub file: PathBuf,
    /// Delete and recreate resources whose drift cannot be changed in place.
    #[arg(long)]
    pub allow_recreate: bool,
}
