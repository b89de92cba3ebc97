//! Who owns a group's filter subjects when instances of several versions
//! share the group.
//!
//! All instances of a service share one durable consumer, and its filter
//! subjects decide which events the group gets at all. During a rolling
//! deploy the versions disagree: a new version handles one more type, an old
//! one does not know it. Whoever writes the consumer last would win, so an old
//! instance that starts (or recovers its consumer) would narrow the filter
//! behind the new ones' backs, and the events of the new type published
//! meanwhile would never reach the group.
//!
//! The rule: **an instance only ever widens the group's filter.** It writes
//! the union of the filter on the server and its own, and writes nothing when
//! the server's already covers its own and its settings match. So a filter
//! grows with the newest version and stays when an instance rolls back; the
//! events of types an instance cannot handle are left for one that can (see
//! [`UnhandledPolicy`](super::UnhandledPolicy)). Instances check the filter
//! again every [`CHECK_INTERVAL`] and widen it back if something narrowed it.
//!
//! The union was chosen over a registry of live versions (a KV record with
//! leases): a registry narrows automatically when the last new instance goes
//! away, and events of the dropped type published after that are skipped for
//! good, which is exactly the silent loss this avoids. Narrowing stays a
//! deliberate act: [`ConsumerBuilder::replace_group_filter`](super::ConsumerBuilder::replace_group_filter),
//! once every instance runs a version that no longer handles a type.
//!
//! When the server's filter has subjects this instance's lacks, that is
//! drift: reported at WARN and in `jetevents.consume.filter_drift`, once per
//! change.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, ConsumerErrorKind};
use async_nats::jetstream::ErrorCode;
use opentelemetry::KeyValue;

use crate::error::Error;

use super::router::{covers, minimal_filters};
use super::{ConsumeError, ConsumeErrorKind};
use crate::semconv::MESSAGING_CONSUMER_GROUP_NAME;

/// How often a running instance looks at the group's filter.
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// What an instance wants of its group's durable consumer.
#[derive(Clone, Debug)]
pub(crate) struct GroupFilter {
    /// The config this instance would write alone (its own filters).
    pub config: pull::Config,
    /// Its own filter subjects.
    pub mine: Vec<String>,
    /// Write `mine` even if it narrows the group's filter.
    pub replace: bool,
}

/// The outcome of [`GroupFilter::ensure`].
pub(crate) struct Ensured {
    pub consumer: PullConsumer,
    /// Subjects on the server this instance does not ask for, sorted.
    pub drift: Vec<String>,
    /// Whether the consumer was written.
    pub written: bool,
}

impl GroupFilter {
    /// Creates the durable consumer, or updates it so it delivers at least
    /// this instance's types without dropping the other versions' ones.
    pub(crate) async fn ensure(
        &self,
        stream: &stream::Stream<stream::Info>,
    ) -> Result<Ensured, ConsumeError> {
        let group = self.config.durable_name.clone().unwrap_or_default();
        let existing = match stream.consumer_info(&group).await {
            Ok(info) => Some(info.config),
            Err(err) if matches!(err.kind(), ConsumerInfoErrorKind::NotFound) => None,
            Err(err)
                if matches!(err.kind(), ConsumerInfoErrorKind::JetStream(ref js)
                    if js.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                None
            }
            Err(err) => {
                let kind = match err.kind() {
                    ConsumerInfoErrorKind::StreamNotFound => {
                        ConsumeErrorKind::StreamNotFound(stream.cached_info().config.name.clone())
                    }
                    _ => ConsumeErrorKind::Unavailable,
                };
                return Err(Error::with_source(kind, err));
            }
        };
        let server_filters = existing.as_ref().map(filters_of).unwrap_or_default();
        let drift = uncovered(&server_filters, &self.mine);
        let wanted = if self.replace {
            self.mine.clone()
        } else {
            minimal_filters(server_filters.iter().chain(&self.mine).cloned().collect())
        };
        let mut config = self.config.clone();
        set_filters(&mut config, &wanted);
        let unchanged = existing
            .as_ref()
            .is_some_and(|server| same_settings(server, &config, &wanted));
        let (consumer, written) = if unchanged {
            let consumer = stream
                .get_consumer::<pull::Config>(&group)
                .await
                .map_err(|err| Error::with_source(ConsumeErrorKind::Unavailable, err))?;
            (consumer, false)
        } else {
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(|err| classify_create_error(stream, err))?;
            (consumer, true)
        };
        let drift = if self.replace { Vec::new() } else { drift };
        Ok(Ensured {
            consumer,
            drift,
            written,
        })
    }
}

/// Reports drift when it differs from what was reported last; returns the
/// drift now known.
pub(crate) fn report_drift(
    group: &str,
    mine: &[String],
    drift: Vec<String>,
    reported: &[String],
    counter: &opentelemetry::metrics::Counter<u64>,
) -> Vec<String> {
    if drift != reported && !drift.is_empty() {
        tracing::warn!(
            consumer = %group,
            server_only = ?drift,
            this_instance = ?mine,
            "the group's filter has subjects this instance does not handle (another version of \
             the service?); their events are left for instances that handle them"
        );
        counter.add(
            1,
            &[KeyValue::new(
                MESSAGING_CONSUMER_GROUP_NAME,
                group.to_owned(),
            )],
        );
    }
    drift
}

pub(crate) fn filters_of(config: &async_nats::jetstream::consumer::Config) -> Vec<String> {
    let mut filters = config.filter_subjects.clone();
    if !config.filter_subject.is_empty() {
        filters.push(config.filter_subject.clone());
    }
    filters.sort();
    filters
}

/// The subjects of `server` that no subject of `mine` covers.
fn uncovered(server: &[String], mine: &[String]) -> Vec<String> {
    let mut extra: Vec<String> = server
        .iter()
        .filter(|subject| !mine.iter().any(|own| covers(own, subject)))
        .cloned()
        .collect();
    extra.sort();
    extra
}

pub(crate) fn set_filters(config: &mut pull::Config, filters: &[String]) {
    let (single, many) = match filters {
        [single] => (single.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    config.filter_subject = single;
    config.filter_subjects = many;
}

/// Whether writing `desired` would change nothing that matters: the filter
/// (as a set) and the settings an instance chooses.
fn same_settings(
    server: &async_nats::jetstream::consumer::Config,
    desired: &pull::Config,
    wanted: &[String],
) -> bool {
    let mut wanted = wanted.to_vec();
    wanted.sort();
    // With a backoff the server takes its first entry as the ack wait.
    let ack_wait = desired.backoff.first().copied().unwrap_or(desired.ack_wait);
    filters_of(server) == wanted
        && server.ack_wait == ack_wait
        && server.max_deliver == desired.max_deliver
        && server.backoff == desired.backoff
        && (desired.max_ack_pending == 0 || server.max_ack_pending == desired.max_ack_pending)
        && server.priority_policy == desired.priority_policy
        && server.priority_groups == desired.priority_groups
}

fn classify_create_error(
    stream: &stream::Stream<stream::Info>,
    err: stream::ConsumerError,
) -> ConsumeError {
    let kind = match err.kind() {
        ConsumerErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            ConsumeErrorKind::StreamNotFound(stream.cached_info().config.name.clone())
        }
        ConsumerErrorKind::JetStream(js) if is_config_rejection(js.error_code()) => {
            ConsumeErrorKind::CreateConsumer
        }
        _ => ConsumeErrorKind::Unavailable,
    };
    Error::with_source(kind, err)
}

/// Whether a server error refusing the consumer is about the request itself
/// (retrying it cannot help) rather than the server's state (leader
/// elections, JetStream still starting after a restart).
fn is_config_rejection(code: ErrorCode) -> bool {
    ![
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::INSUFFICIENT_RESOURCES,
        ErrorCode::STREAM_OFFLINE,
        ErrorCode::CONSUMER_OFFLINE,
        ErrorCode::STREAM_OFFLINE_REASON,
        ErrorCode::CONSUMER_OFFLINE_REASON,
        ErrorCode::JETSTREAM_NOT_ENABLED,
        ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
    ]
    .contains(&code)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn drift_is_what_the_server_has_and_this_instance_does_not_cover() {
        let server = strings(&["dev.shop.order.paid.v1", "dev.shop.order.placed.v1"]);
        assert_eq!(
            uncovered(&server, &strings(&["dev.shop.order.placed.v1"])),
            strings(&["dev.shop.order.paid.v1"])
        );
        assert!(uncovered(&server, &strings(&["dev.shop.>"])).is_empty());
    }

    #[test]
    fn unchanged_means_same_filter_set_and_settings() {
        let mut desired = pull::Config {
            durable_name: Some("g".into()),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            ..Default::default()
        };
        let wanted = strings(&["b", "a"]);
        set_filters(&mut desired, &wanted);
        let server = async_nats::jetstream::consumer::Config {
            filter_subjects: strings(&["a", "b"]),
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            max_ack_pending: 1000,
            ..Default::default()
        };
        assert!(same_settings(&server, &desired, &wanted));
        assert!(!same_settings(&server, &desired, &strings(&["a"])));
        desired.max_deliver = 11;
        assert!(!same_settings(&server, &desired, &wanted));
    }
}
