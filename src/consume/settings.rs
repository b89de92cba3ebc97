//! The consumer's settings, and the durable consumer configuration derived
//! from them.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

use super::group_filter;
use super::{
    AckMode, DeadLetterConfig, RetryPolicy, ServerBackoff, UnhandledPolicy, DELIVERY_MARGIN,
};

#[cfg(doc)]
use super::ConsumerBuilder;

/// Prefetch without [`ConsumerBuilder::prefetch`]: twice the concurrency,
/// within these bounds.
const DEFAULT_MIN_PREFETCH: usize = 256;
const DEFAULT_MAX_PREFETCH: usize = 512;

/// Handler timeout without [`ConsumerBuilder::handler_timeout`]: long enough
/// for any handler that is working (a slow API, a large batch), short enough
/// that a hung one does not hold its event, and those prefetched behind it,
/// for hours.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Settings shared by the builder, the consumer and the runner.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub dead_letter: DeadLetterConfig,
    pub unhandled: UnhandledPolicy,
    pub ack_mode: AckMode,
    pub ack_wait: Duration,
    pub max_ack_pending: Option<i64>,
    pub max_deliver: Option<i64>,
    pub server_backoff: ServerBackoff,
    pub shutdown_grace: Duration,
    pub handler_timeout: Duration,
    pub pull_expiry: Duration,
    pub prefetch: Option<usize>,
    pub deliver_policy: DeliverPolicy,
    pub extra_filters: Vec<String>,
    pub replace_group_filter: bool,
    /// This instance's place in the group's priority group.
    pub priority: Option<super::Priority>,
    /// Breakers around every route that pause the pulling while open.
    pub breakers: Vec<super::CircuitBreaker>,
    /// Set for the consumer of one partition of a partitioned group.
    pub pinned: Option<Pinned>,
    #[cfg(feature = "encryption")]
    pub decryption: Option<crate::encryption::Encryption>,
}

/// A consumer one client at a time receives from: a pinned-client priority
/// group (ADR-42), as the partitions of a partitioned group use.
#[derive(Clone, Debug)]
pub(crate) struct Pinned {
    /// The priority group pull requests name.
    pub group: String,
    /// How long the server keeps the pin of a client that stopped pulling.
    pub ttl: Duration,
    /// Told the types this partition's owner left unhandled, so that the
    /// group can move the partition to a member that handles them.
    pub unhandled: super::partitioned::UnhandledTypes,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            concurrency: 8,
            dead_letter: DeadLetterConfig::default(),
            unhandled: UnhandledPolicy::default(),
            ack_mode: AckMode::default(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: None,
            max_deliver: None,
            server_backoff: ServerBackoff::default(),
            shutdown_grace: Duration::from_secs(10),
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            pull_expiry: Duration::from_secs(10),
            prefetch: None,
            deliver_policy: DeliverPolicy::All,
            extra_filters: Vec::new(),
            replace_group_filter: false,
            priority: None,
            breakers: Vec::new(),
            pinned: None,
            #[cfg(feature = "encryption")]
            decryption: None,
        }
    }
}

impl Settings {
    fn max_deliver(&self) -> i64 {
        // Attempts are failed handler runs, counted by the runner; the
        // server's bound sits above them, for deliveries that were not
        // attempts and for events that never get settled (an instance that
        // crashes on every run), which the undeliverable watcher then
        // dead-letters.
        self.max_deliver.unwrap_or_else(|| {
            i64::from(self.retry.attempts())
                .saturating_add(1)
                .saturating_add(DELIVERY_MARGIN)
        })
    }

    fn backoff(&self) -> Vec<Duration> {
        let mut backoff = match &self.server_backoff {
            ServerBackoff::Derived => self.retry.server_backoff(self.ack_wait),
            ServerBackoff::Off => Vec::new(),
            ServerBackoff::Custom(delays) => delays.clone(),
        };
        // The server requires max_deliver > number of backoff entries.
        let max_deliver = self.max_deliver();
        if max_deliver > 0 {
            backoff.truncate(usize::try_from(max_deliver - 1).unwrap_or(0));
        }
        backoff
    }

    /// Whether a consumer-wide breaker stops the pulling, with `running`
    /// handler calls.
    pub(crate) fn pulling_paused(&self, running: usize) -> bool {
        self.breakers
            .iter()
            .any(|breaker| breaker.pauses_pulling(running))
    }

    /// Whether a consumer-wide breaker holds calls: received events wait
    /// for it, not for hung handlers.
    pub(crate) fn breaker_holding(&self) -> bool {
        self.breakers.iter().any(super::CircuitBreaker::is_holding)
    }

    /// Events the runner keeps requested or received beyond its running
    /// handlers: enough to hide the pull round trip, few enough that none
    /// waits long (waiting ones get in-progress acks all the same).
    pub(crate) fn prefetch(&self) -> usize {
        self.prefetch
            .unwrap_or_else(|| {
                (2 * self.concurrency).clamp(DEFAULT_MIN_PREFETCH, DEFAULT_MAX_PREFETCH)
            })
            .max(1)
    }

    /// The longest the server waits before redelivering an unacked event:
    /// the ack wait, or the longest backoff entry.
    pub(crate) fn redelivery_period(&self) -> Duration {
        self.backoff()
            .into_iter()
            .chain(std::iter::once(self.ack_wait))
            .max()
            .unwrap_or(self.ack_wait)
    }

    /// How often a running handler's event gets an in-progress ack: a third
    /// of the shortest time the server waits for an ack.
    pub(crate) fn progress_interval(&self) -> Duration {
        let shortest = self
            .backoff()
            .into_iter()
            .chain(std::iter::once(self.ack_wait))
            .min()
            .unwrap_or(self.ack_wait);
        (shortest / 3).max(Duration::from_millis(10))
    }
}

/// What this instance wants of the group's durable consumer.
pub(super) fn group_filter(
    group: &str,
    filters: &[String],
    settings: &Settings,
) -> group_filter::GroupFilter {
    group_filter::GroupFilter {
        config: consumer_config(group, filters, settings),
        mine: filters.to_vec(),
        replace: settings.replace_group_filter,
    }
}

/// The durable consumer's configuration with this instance's filters.
pub(super) fn consumer_config(
    group: &str,
    filters: &[String],
    settings: &Settings,
) -> pull::Config {
    let mut config = pull::Config {
        durable_name: Some(group.to_owned()),
        description: Some(format!("jetevents consumer group {group}")),
        deliver_policy: settings.deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver(),
        max_ack_pending: settings.max_ack_pending.unwrap_or_default(),
        backoff: settings.backoff(),
        ..Default::default()
    };
    if let Some(pinned) = &settings.pinned {
        config.priority_policy = async_nats::jetstream::consumer::PriorityPolicy::PinnedClient;
        config.priority_groups = vec![pinned.group.clone()];
        config.priority_timeout = pinned.ttl;
    }
    group_filter::set_filters(&mut config, filters);
    if let Some(priority) = &settings.priority {
        priority.configure(&mut config);
    }
    config
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn consumer_config_follows_the_retry_policy() {
        let settings = Settings {
            retry: RetryPolicy::fixed(Duration::from_secs(2)).max_attempts(3),
            ack_wait: Duration::from_secs(9),
            server_backoff: ServerBackoff::Derived,
            ..Settings::default()
        };
        assert!(Settings::default().backoff().is_empty());
        let config = consumer_config("billing", &["dev.a.b.c.v1".into()], &settings);
        assert_eq!(config.durable_name.as_deref(), Some("billing"));
        assert_eq!(config.max_deliver, 4 + DELIVERY_MARGIN);
        assert_eq!(config.backoff, vec![Duration::from_secs(11); 3]);
        assert_eq!(config.filter_subject, "dev.a.b.c.v1");
        assert!(config.filter_subjects.is_empty());
        assert_eq!(settings.progress_interval(), Duration::from_secs(3));

        let config = consumer_config("billing", &["x.a".into(), "x.b".into()], &settings);
        assert_eq!(config.filter_subject, "");
        assert_eq!(config.filter_subjects.len(), 2);
    }

    #[test]
    fn prefetch_and_redelivery_period_follow_the_settings() {
        let defaults = Settings::default();
        assert_eq!(defaults.prefetch(), 256);
        let wide = Settings {
            concurrency: 400,
            ..Settings::default()
        };
        assert_eq!(wide.prefetch(), 512);
        let chosen = Settings {
            prefetch: Some(2),
            ..Settings::default()
        };
        assert_eq!(chosen.prefetch(), 2);
        // The longest backoff entry when it exceeds the ack wait.
        let settings = Settings {
            retry: RetryPolicy::fixed(Duration::from_secs(2)).max_attempts(3),
            ack_wait: Duration::from_secs(9),
            server_backoff: ServerBackoff::Derived,
            ..Settings::default()
        };
        assert_eq!(settings.redelivery_period(), Duration::from_secs(11));
        let off = Settings {
            server_backoff: ServerBackoff::Off,
            ack_wait: Duration::from_secs(9),
            ..Settings::default()
        };
        assert_eq!(off.redelivery_period(), Duration::from_secs(9));
    }

    #[test]
    fn backoff_fits_a_lower_max_deliver() {
        let settings = Settings {
            max_deliver: Some(2),
            server_backoff: ServerBackoff::Custom(vec![Duration::from_millis(30); 5]),
            ..Settings::default()
        };
        assert_eq!(settings.backoff(), vec![Duration::from_millis(30)]);
        assert_eq!(settings.progress_interval(), Duration::from_millis(10));
        let off = Settings {
            server_backoff: ServerBackoff::Off,
            ..Settings::default()
        };
        assert!(off.backoff().is_empty());
        assert_eq!(off.progress_interval(), Duration::from_secs(10));
    }
}
