//! The topology file: streams, consumer groups, dead-letter streams, KV
//! buckets and services, in TOML or YAML (one model, picked by the file's
//! extension). A field left out is not managed: the server keeps its value.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use serde::{Deserialize, Deserializer};

use crate::failure::Failure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default, rename = "stream")]
    pub streams: Vec<StreamDecl>,
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupDecl>,
    #[serde(default)]
    pub dead_letters: Vec<DeadLettersDecl>,
    #[serde(default)]
    pub kv: Vec<KvDecl>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDecl {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: Option<StorageType>,
    pub retention: Option<RetentionPolicy>,
    pub replicas: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub max_age: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub duplicate_window: Option<Duration>,
    pub max_messages: Option<i64>,
    pub max_bytes: Option<i64>,
    pub description: Option<String>,
}

/// A consumer group: a durable pull consumer shared by a service's instances.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDecl {
    pub stream: String,
    pub name: String,
    pub filter_subjects: Option<Vec<String>>,
    pub max_deliver: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub ack_wait: Option<Duration>,
    pub max_ack_pending: Option<i64>,
    pub deliver_policy: Option<DeliverPolicyDecl>,
    pub ack_policy: Option<AckPolicy>,
    pub description: Option<String>,
}

/// The deliver policies a group can be declared with (the others need a
/// start sequence or time, which belong to a one-off consumer).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicyDecl {
    All,
    New,
    Last,
    LastPerSubject,
}

impl DeliverPolicyDecl {
    pub fn policy(self) -> DeliverPolicy {
        match self {
            Self::All => DeliverPolicy::All,
            Self::New => DeliverPolicy::New,
            Self::Last => DeliverPolicy::Last,
            Self::LastPerSubject => DeliverPolicy::LastPerSubject,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersDecl {
    pub stream: String,
    pub subject_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvDecl {
    pub bucket: String,
    pub history: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub max_age: Option<Duration>,
    pub storage: Option<StorageType>,
    pub replicas: Option<usize>,
    pub max_value_size: Option<i32>,
    pub description: Option<String>,
}

/// A service: what it publishes, reads and provisions. Not applied to the
/// server: its NATS permissions are generated from it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDecl {
    pub name: String,
    /// The event types it publishes.
    #[serde(default)]
    pub publishes: Vec<String>,
    /// The declared groups it reads, by name.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The streams it creates and updates itself.
    #[serde(default)]
    pub streams: Vec<String>,
    /// The Object Store buckets its claim checks use.
    #[serde(default)]
    pub claim_checks: Vec<String>,
    /// The declared dead-letter stream its groups use (default: the
    /// library's `DEAD_LETTERS`).
    pub dead_letters: Option<String>,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::duration::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The file formats a topology is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
}

impl Format {
    fn of(path: &Path) -> Result<Format, Failure> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("toml") => Ok(Format::Toml),
            Some("yaml" | "yml") => Ok(Format::Yaml),
            _ => Err(Failure::new(format!(
                "{}: a topology file ends in .toml, .yaml or .yml",
                path.display()
            ))),
        }
    }
}

impl Topology {
    pub fn read(path: &Path) -> Result<Topology, Failure> {
        let format = Format::of(path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|err| Failure::during(&format!("reading {}", path.display()), err))?;
        let parsed = match format {
            Format::Toml => toml::from_str(&text).map_err(|err| err.to_string()),
            Format::Yaml => serde_saphyr::from_str(&text).map_err(|err| err.to_string()),
        };
        parsed.map_err(|err| Failure::during(&path.display().to_string(), err))
    }
}
