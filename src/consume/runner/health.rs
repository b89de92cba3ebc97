//! Keeping the durable consumer alive: the watchdog after empty pulls, and
//! getting the consumer back when it is lost.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, stream, ErrorCode};
use futures_util::stream::FuturesUnordered;

use crate::backoff::Backoff;
use crate::client::Client;
use crate::consume::group_filter::{self, GroupFilter};
use crate::consume::{ConsumeError, ConsumeErrorKind};
use crate::error::Error;
use crate::transport::nats_delivery::NatsDelivery;

use super::waiting::Waiting;
use super::{alongside, Runtime, Signal};

/// Pauses between attempts to get the consumer back.
const RECOVERY_DELAYS: Backoff =
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
/// Bound on loading the consumer's state in the watchdog (the request has
/// its own timeout, but not while the client's queue is full).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Empty pulls in a row whose consumer state could not be loaded before the
/// consumer is recreated.
const MAX_FAILED_CHECKS: u32 = 3;

/// The stream `name`, `StreamNotFound`, or `Unavailable` when the server
/// did not answer.
pub(in crate::consume) async fn get_stream(
    client: &Client,
    name: &str,
) -> Result<stream::Stream<stream::Info>, ConsumeError> {
    let nats = client
        .nats_transport("a durable consumer's stream")
        .map_err(|err| Error::with_source(ConsumeErrorKind::Unavailable, err))?;
    nats.jetstream.get_stream(name).await.map_err(|err| {
        let missing = matches!(
            err.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(ref js)
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND
        );
        let kind = if missing {
            ConsumeErrorKind::StreamNotFound(name.to_owned())
        } else {
            ConsumeErrorKind::Unavailable
        };
        Error::with_source(kind, err)
    })
}

/// Whether the loop should recreate the consumer after pulls that brought
/// nothing, from what the watchdog saw this time and the times before.
#[derive(Default)]
pub(super) struct Health {
    suspicious_pulls: u32,
    failed_checks: u32,
}

impl Health {
    pub(super) fn recreate_after(&mut self, check: Watchdog, group: &str) -> bool {
        match check {
            Watchdog::Healthy => {
                *self = Health::default();
                false
            }
            // Once can be a race with a publish right after the pull
            // expired; twice in a row is a stuck consumer.
            Watchdog::PendingButEmpty(pending) => {
                self.suspicious_pulls += 1;
                self.failed_checks = 0;
                if self.suspicious_pulls >= 2 {
                    tracing::warn!(
                        consumer = %group,
                        pending,
                        "server reports pending events but pulls get none; recreating the consumer"
                    );
                }
                self.suspicious_pulls >= 2
            }
            Watchdog::Missing => {
                tracing::warn!(consumer = %group, "durable consumer was deleted; recreating it");
                true
            }
            // Once is a disconnect or a slow server; the next pull tells
            // more. Again and again while pulls come back empty is not.
            Watchdog::Unknown(error) => {
                self.failed_checks += 1;
                if self.failed_checks >= MAX_FAILED_CHECKS {
                    tracing::warn!(
                        consumer = %group,
                        error,
                        checks = self.failed_checks,
                        "consumer state keeps failing to load; recreating the consumer"
                    );
                }
                self.failed_checks >= MAX_FAILED_CHECKS
            }
        }
    }
}

pub(super) enum Watchdog {
    Healthy,
    /// The server holds this many events for the consumer, yet none came.
    PendingButEmpty(u64),
    /// The durable consumer (or its stream) is gone.
    Missing,
    /// The consumer's state could not be loaded (disconnected, timeout).
    Unknown(String),
}

/// After an empty pull: is the consumer still there, and if the server holds
/// events for it, why did none come?
pub(super) async fn watchdog(
    consumer: &mut jetstream::consumer::PullConsumer,
    group: &str,
    priority: Option<&crate::consume::Priority>,
) -> Watchdog {
    let info = match tokio::time::timeout(CHECK_TIMEOUT, consumer.info()).await {
        Ok(info) => info,
        Err(_) => return Watchdog::Unknown("consumer info timed out".to_owned()),
    };
    match info {
        Ok(info) => {
            let max_ack_pending =
                usize::try_from(info.config.max_ack_pending).unwrap_or(usize::MAX);
            let room = max_ack_pending == 0 || info.num_ack_pending < max_ack_pending;
            // A standby below its thresholds, or a lower priority level,
            // is meant to get nothing.
            let expected = priority.is_some_and(|priority| {
                priority.explains_empty_pull(info.num_pending, info.num_ack_pending)
            });
            if info.num_pending > 0 && room && !expected {
                Watchdog::PendingButEmpty(info.num_pending)
            } else {
                Watchdog::Healthy
            }
        }
        Err(err) => {
            use jetstream::context::ConsumerInfoErrorKind as Kind;
            let missing = match err.kind() {
                Kind::NotFound | Kind::StreamNotFound => true,
                Kind::JetStream(js) => js.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
                _ => false,
            };
            if missing {
                Watchdog::Missing
            } else {
                tracing::debug!(consumer = %group, error = %err, "consumer info failed");
                Watchdog::Unknown(err.to_string())
            }
        }
    }
}

/// What recovering the durable consumer needs, in one place for the loop's
/// three recovery points.
pub(super) struct Recovery<'a, S> {
    pub(super) shared: &'a Runtime<S>,
    pub(super) client: &'a Client,
    pub(super) stream: &'a str,
    pub(super) group_filter: &'a GroupFilter,
    pub(super) signal: &'a Signal,
}

impl<S> Recovery<'_, S> {
    /// [`recover`] into `consumer`, the running handlers going on meanwhile;
    /// `Some` with the runner's result when it must end instead (shutdown,
    /// or the stream is gone).
    pub(super) async fn restore<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
        waiting: &mut VecDeque<Waiting<NatsDelivery>>,
    ) -> Option<Result<(), ConsumeError>> {
        let recovered = recover(self.client, self.stream, self.group_filter, self.signal);
        match alongside(tasks, waiting, self.shared, recovered).await {
            Ok(Some(recovered)) => {
                *consumer = recovered;
                None
            }
            Ok(None) => Some(Ok(())),
            Err(err) => Some(Err(err)),
        }
    }

    /// Widens the group's filter again if something narrowed it (an older
    /// instance that does not know this rule, or a deliberate replace), and
    /// reports drift; the running handlers go on meanwhile. A failed check
    /// is left to the next one (pulls have their own recovery).
    pub(super) async fn check_filter<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
        waiting: &mut VecDeque<Waiting<NatsDelivery>>,
        drift: &mut Vec<String>,
    ) -> Option<Result<(), ConsumeError>> {
        let group = self
            .group_filter
            .config
            .durable_name
            .as_deref()
            .unwrap_or_default();
        let checked = async {
            let stream = get_stream(self.client, self.stream).await?;
            self.group_filter.ensure(&stream).await
        };
        match alongside(tasks, waiting, self.shared, checked).await {
            Ok(ensured) => {
                if ensured.written {
                    tracing::warn!(
                        consumer = %group,
                        "the group's filter or settings had changed under this instance; \
                         widened it back to cover this instance's types"
                    );
                    *consumer = ensured.consumer;
                }
                *drift = group_filter::report_drift(
                    group,
                    &self.group_filter.mine,
                    ensured.drift,
                    drift,
                    &self.client.metrics().filter_drift,
                );
                None
            }
            Err(err) if matches!(err.kind(), ConsumeErrorKind::StreamNotFound(_)) => {
                tracing::error!(stream = %self.stream, "stream deleted; consumer stops");
                Some(Err(err))
            }
            Err(err) => {
                tracing::debug!(consumer = %group, error = %err, "filter check failed");
                None
            }
        }
    }
}

/// Gets the durable consumer back (creating it again if it was deleted),
/// retrying with backoff until it works or shutdown. Fails only when the
/// stream is gone or the server rejects the configuration.
async fn recover(
    client: &Client,
    stream_name: &str,
    group_filter: &GroupFilter,
    signal: &Signal,
) -> Result<Option<jetstream::consumer::PullConsumer>, ConsumeError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let delay = RECOVERY_DELAYS.delay(u64::from(attempt));
        let result = match get_stream(client, stream_name).await {
            Ok(stream) => group_filter.ensure(&stream).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(ensured) => {
                if attempt > 1 {
                    tracing::info!(stream = %stream_name, attempt, "consumer recovered");
                }
                return Ok(Some(ensured.consumer));
            }
            Err(err) if matches!(err.kind(), ConsumeErrorKind::StreamNotFound(_)) => {
                tracing::error!(stream = %stream_name, "stream deleted; consumer stops");
                return Err(err);
            }
            Err(err) if matches!(err.kind(), ConsumeErrorKind::CreateConsumer) && attempt > 3 => {
                return Err(err);
            }
            Err(err) => {
                tracing::warn!(
                    stream = %stream_name,
                    attempt,
                    retry_in_ms = delay.as_millis() as u64,
                    error = %err,
                    "consumer unavailable; retrying"
                );
            }
        }
        tokio::select! {
            biased;
            () = signal.clone() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
