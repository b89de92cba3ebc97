//! Each kind of declared resource: how it is read, compared and changed.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{consumer, kv, stream};
use jetevents::client::Client;
use jetevents::consume::{DeadLetterConfig, DeadLetters};

use super::declaration::{DeadLettersDecl, GroupDecl, KvDecl, StreamDecl};
use super::{Action, Diff};
use crate::failure::Failure;

const IN_PLACE: bool = true;
const RECREATE: bool = false;

pub enum Resource<'a> {
    Stream(&'a StreamDecl),
    DeadLetters(&'a DeadLettersDecl),
    Kv(&'a KvDecl),
    Group(&'a GroupDecl),
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stream(s) => write!(f, "stream {}", s.name),
            Self::DeadLetters(d) => write!(f, "dead-letter stream {}", d.stream),
            Self::Kv(k) => write!(f, "kv bucket {}", k.bucket),
            Self::Group(g) => write!(f, "group {}/{}", g.stream, g.name),
        }
    }
}

fn shown<T: fmt::Debug>(value: &T) -> String {
    format!("{value:?}")
}

fn shown_duration(value: &Duration) -> String {
    crate::duration::format(*value)
}

impl Resource<'_> {
    /// The stream holding this resource (groups: the one they read).
    fn stream_name(&self) -> String {
        match self {
            Self::Stream(s) => s.name.clone(),
            Self::DeadLetters(d) => d.stream.clone(),
            Self::Kv(k) => format!("KV_{}", k.bucket),
            Self::Group(g) => g.stream.clone(),
        }
    }

    /// What apply would do; `None` when in sync.
    pub async fn plan(&self, client: &Client) -> Result<Option<Action>, Failure> {
        let stream = crate::stream::find(client, &self.stream_name()).await?;
        if let Self::Group(group) = self {
            let Some(stream) = stream else {
                // Its stream is declared too and created first, or apply fails.
                return Ok(Some(Action::Create));
            };
            return match group_config(&stream, &group.name).await? {
                None => Ok(Some(Action::Create)),
                Some(actual) => {
                    Ok(group_diff(&actual, &group_wanted(group, actual.clone())).action())
                }
            };
        }
        let Some(mut stream) = stream else {
            return Ok(Some(Action::Create));
        };
        let actual = stream
            .info()
            .await
            .map_err(|err| Failure::during(&self.to_string(), err))?
            .config
            .clone();
        let wanted = self.stream_wanted(actual.clone());
        Ok(stream_diff(&actual, &wanted).action())
    }

    /// The stream's config with the declared settings written over `base`.
    fn stream_wanted(&self, mut config: stream::Config) -> stream::Config {
        match self {
            Self::Stream(decl) => {
                config.subjects.clone_from(&decl.subjects);
                config.storage = decl.storage.unwrap_or(config.storage);
                config.retention = decl.retention.unwrap_or(config.retention);
                config.num_replicas = decl.replicas.unwrap_or(config.num_replicas);
                config.max_age = decl.max_age.unwrap_or(config.max_age);
                config.duplicate_window = decl.duplicate_window.unwrap_or(config.duplicate_window);
                config.max_messages = decl.max_messages.unwrap_or(config.max_messages);
                config.max_bytes = decl.max_bytes.unwrap_or(config.max_bytes);
                config.description = decl.description.clone().or(config.description);
            }
            Self::DeadLetters(decl) => config.subjects = vec![format!("{}.>", decl.subject_prefix)],
            Self::Kv(decl) => {
                config.max_messages_per_subject =
                    decl.history.unwrap_or(config.max_messages_per_subject);
                config.max_age = decl.max_age.unwrap_or(config.max_age);
                config.storage = decl.storage.unwrap_or(config.storage);
                config.num_replicas = decl.replicas.unwrap_or(config.num_replicas);
                config.max_message_size = decl.max_value_size.unwrap_or(config.max_message_size);
                config.description = decl.description.clone().or(config.description);
            }
            Self::Group(_) => {}
        }
        config
    }

    pub async fn apply(&self, client: &Client, action: &Action) -> Result<(), Failure> {
        let js = crate::stream::jetstream(client)?;
        // A group is recreated on its own, its stream stays.
        if matches!(action, Action::Recreate(_)) && !matches!(self, Self::Group(_)) {
            js.delete_stream(self.stream_name())
                .await
                .map_err(|err| Failure::during("deleting", err))?;
        }
        match (self, action) {
            (Self::Group(group), _) => apply_group(client, group, action).await,
            (_, Action::Update(_)) => {
                let mut stream = crate::stream::open(client, &self.stream_name()).await?;
                let actual = stream.info().await?.config.clone();
                js.update_stream(self.stream_wanted(actual)).await?;
                Ok(())
            }
            (Self::Stream(_), _) => {
                let base = stream::Config {
                    name: self.stream_name(),
                    ..Default::default()
                };
                js.create_stream(self.stream_wanted(base)).await?;
                Ok(())
            }
            (Self::DeadLetters(decl), _) => {
                let config =
                    DeadLetterConfig::new(decl.stream.clone(), decl.subject_prefix.clone());
                DeadLetters::with_config(client, config)
                    .ensure_stream()
                    .await?;
                Ok(())
            }
            (Self::Kv(decl), _) => {
                js.create_key_value(kv::Config {
                    bucket: decl.bucket.clone(),
                    history: decl.history.unwrap_or(1),
                    max_age: decl.max_age.unwrap_or_default(),
                    storage: decl.storage.unwrap_or_default(),
                    num_replicas: decl.replicas.unwrap_or(1),
                    max_value_size: decl.max_value_size.unwrap_or(-1),
                    description: decl.description.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .await?;
                Ok(())
            }
        }
    }
}

fn stream_diff(actual: &stream::Config, wanted: &stream::Config) -> Diff {
    let mut diff = Diff::default();
    let mut compare = |field, a: String, w: String, in_place| diff.compare(field, a, w, in_place);
    compare(
        "subjects",
        shown(&actual.subjects),
        shown(&wanted.subjects),
        IN_PLACE,
    );
    compare(
        "storage",
        shown(&actual.storage),
        shown(&wanted.storage),
        RECREATE,
    );
    compare(
        "retention",
        shown(&actual.retention),
        shown(&wanted.retention),
        RECREATE,
    );
    compare(
        "replicas",
        shown(&actual.num_replicas),
        shown(&wanted.num_replicas),
        IN_PLACE,
    );
    compare(
        "max_age",
        shown_duration(&actual.max_age),
        shown_duration(&wanted.max_age),
        IN_PLACE,
    );
    compare(
        "duplicate_window",
        shown_duration(&actual.duplicate_window),
        shown_duration(&wanted.duplicate_window),
        IN_PLACE,
    );
    compare(
        "max_messages",
        shown(&actual.max_messages),
        shown(&wanted.max_messages),
        IN_PLACE,
    );
    compare(
        "max_bytes",
        shown(&actual.max_bytes),
        shown(&wanted.max_bytes),
        IN_PLACE,
    );
    compare(
        "history",
        shown(&actual.max_messages_per_subject),
        shown(&wanted.max_messages_per_subject),
        IN_PLACE,
    );
    compare(
        "max_message_size",
        shown(&actual.max_message_size),
        shown(&wanted.max_message_size),
        IN_PLACE,
    );
    compare(
        "description",
        shown(&actual.description),
        shown(&wanted.description),
        IN_PLACE,
    );
    diff
}

async fn group_config(
    stream: &stream::Stream,
    name: &str,
) -> Result<Option<consumer::Config>, Failure> {
    match stream.consumer_info(name).await {
        Ok(info) => Ok(Some(info.config.clone())),
        Err(err) if err.to_string().contains("consumer not found") => Ok(None),
        Err(err) => Err(Failure::during(&format!("group {name}"), err)),
    }
}

/// One filter is stored in `filter_subject`, several in `filter_subjects`.
fn filters(config: &consumer::Config) -> Vec<String> {
    if config.filter_subjects.is_empty() && !config.filter_subject.is_empty() {
        vec![config.filter_subject.clone()]
    } else {
        config.filter_subjects.clone()
    }
}

fn group_wanted(decl: &GroupDecl, mut config: consumer::Config) -> consumer::Config {
    config.durable_name = Some(decl.name.clone());
    if let Some(subjects) = &decl.filter_subjects {
        config.filter_subject = String::new();
        config.filter_subjects.clone_from(subjects);
    }
    config.max_deliver = decl.max_deliver.unwrap_or(config.max_deliver);
    config.ack_wait = decl.ack_wait.unwrap_or(config.ack_wait);
    config.max_ack_pending = decl.max_ack_pending.unwrap_or(config.max_ack_pending);
    config.deliver_policy = decl
        .deliver_policy
        .map(|p| p.policy())
        .unwrap_or(config.deliver_policy);
    config.ack_policy = decl.ack_policy.unwrap_or(config.ack_policy);
    config.description = decl.description.clone().or(config.description);
    config
}

fn group_diff(actual: &consumer::Config, wanted: &consumer::Config) -> Diff {
    let mut diff = Diff::default();
    let mut compare = |field, a: String, w: String, in_place| diff.compare(field, a, w, in_place);
    compare(
        "filter_subjects",
        shown(&filters(actual)),
        shown(&filters(wanted)),
        IN_PLACE,
    );
    compare(
        "max_deliver",
        shown(&actual.max_deliver),
        shown(&wanted.max_deliver),
        IN_PLACE,
    );
    compare(
        "ack_wait",
        shown_duration(&actual.ack_wait),
        shown_duration(&wanted.ack_wait),
        IN_PLACE,
    );
    compare(
        "max_ack_pending",
        shown(&actual.max_ack_pending),
        shown(&wanted.max_ack_pending),
        IN_PLACE,
    );
    compare(
        "deliver_policy",
        shown(&actual.deliver_policy),
        shown(&wanted.deliver_policy),
        RECREATE,
    );
    compare(
        "ack_policy",
        shown(&actual.ack_policy),
        shown(&wanted.ack_policy),
        RECREATE,
    );
    compare(
        "description",
        shown(&actual.description),
        shown(&wanted.description),
        IN_PLACE,
    );
    diff
}

async fn apply_group(client: &Client, decl: &GroupDecl, action: &Action) -> Result<(), Failure> {
    let stream = crate::stream::open(client, &decl.stream).await?;
    match action {
        Action::Update(_) => {
            let actual = group_config(&stream, &decl.name)
                .await?
                .ok_or_else(|| Failure::new("the group disappeared"))?;
            stream
                .update_consumer(group_wanted(decl, actual))
                .await
                .map(drop)
                .map_err(Failure::from)
        }
        Action::Create | Action::Recreate(_) => {
            if matches!(action, Action::Recreate(_)) {
                stream.delete_consumer(&decl.name).await?;
            }
            let base = consumer::Config {
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            };
            stream
                .create_consumer(group_wanted(decl, base))
                .await
                .map(drop)
                .map_err(Failure::from)
        }
    }
}
