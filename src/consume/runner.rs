//! The pull loop and the life of one delivery: decode, route, handle, settle.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream, ErrorCode};
use chrono::Utc;
use futures_util::future::{BoxFuture, Shared};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use opentelemetry::KeyValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::client::Client;
use crate::error::Error;
use crate::publish::Publisher;

use super::attempts::FailedRuns;
use super::context::Context;
use super::dead_letter::{self, DeadLetterReason, Failure};
use super::group_filter::{self, GroupFilter};
use super::router::{Resolved, Router};
use super::{AckMode, ConsumeError, ConsumeErrorKind, Consumer, Settings, UnhandledPolicy};

/// Longest pause between attempts to get the consumer back.
const MAX_RECOVERY_DELAY: Duration = Duration::from_secs(5);
/// How long after its expiry a pull may stay open before the watchdog drops it.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// How long handlers get to settle after being told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bound on loading the consumer's state in the watchdog (the request has
/// its own timeout, but not while the client's queue is full).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Empty pulls in a row whose consumer state could not be loaded before the
/// consumer is recreated.
const MAX_FAILED_CHECKS: u32 = 3;
/// Bound on subscribing the pull inbox.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the loop looks at overdue pulls, the connection and waiting
/// events when nothing else wakes it.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Events and statuses taken off the inbox in one pass of the loop.
const MAX_TAKEN_AT_ONCE: usize = 64;
/// Added to the redelivery period while pulling carefully after a lost
/// connection.
const CAREFUL_MARGIN: Duration = Duration::from_secs(2);
/// How often a runner still waiting for the connection says so.
const DISCONNECTED_REPORT: Duration = Duration::from_secs(30);

type Signal = Shared<BoxFuture<'static, ()>>;

/// What the runner shares with every delivery task.
struct Runtime<S> {
    client: Client,
    publisher: Publisher,
    group: Arc<str>,
    router: Router<S>,
    state: S,
    settings: Settings,
    progress_interval: Duration,
    attributes: AttributeCache,
    failed_runs: FailedRuns,
}

/// The stream `name`, `StreamNotFound`, or `Unavailable` when the server
/// did not answer.
pub(crate) async fn get_stream(
    client: &Client,
    name: &str,
) -> Result<stream::Stream<stream::Info>, ConsumeError> {
    client.jetstream().get_stream(name).await.map_err(|err| {
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

pub(crate) async fn run<S, F>(consumer: Consumer<S>, signal: F) -> Result<(), ConsumeError>
where
    S: Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let signal: Signal = signal.boxed().shared();
    let Consumer {
        client,
        group,
        stream,
        filters,
        router,
        state,
        settings,
        consumer: mut pull_consumer,
        mut drift,
    } = consumer;
    let failed_runs = FailedRuns::open(&client, &stream, &group).await;
    let shared = Arc::new(Runtime {
        failed_runs,
        publisher: client.publisher(),
        client: client.clone(),
        group: Arc::from(group.as_str()),
        router,
        state,
        progress_interval: settings.progress_interval(),
        attributes: AttributeCache::new(&group),
        settings,
    });
    let group_filter = super::group_filter(&group, &filters, &shared.settings);
    let mut filter_check = Instant::now() + group_filter::CHECK_INTERVAL;
    let _watch =
        super::undeliverable::watch(&client, &stream, &group, &shared.settings.dead_letter);
    let concurrency = shared.settings.concurrency;
    let prefetch = shared.settings.prefetch();
    let expiry = shared.settings.pull_expiry;
    let careful_period = shared.settings.redelivery_period() + CAREFUL_MARGIN;
    let progress_interval = shared.progress_interval;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = FuturesUnordered::new();
    let mut inbox = Inbox::subscribe(&client).await?;
    let mut pulls = Pulls::default();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut health = Health::default();
    let mut received_since_check = 0usize;
    let mut disconnects = client.disconnects();
    let mut careful_until: Option<Instant> = None;
    let mut disconnected_since: Option<Instant> = None;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let recovery = Recovery {
        client: &client,
        stream: &stream,
        group_filter: &group_filter,
        signal: &signal,
    };

    // One clone polled throughout: a clone per pass would register and
    // drop a waker each time.
    let stopping = signal.clone();
    tokio::pin!(stopping);

    let result = 'pulling: loop {
        while tasks.len() < concurrency {
            let Some(next) = waiting.pop_front() else {
                break;
            };
            tasks.push(process(next.message, shared.clone(), stopped.clone()));
        }

        // The pulls of a lost connection are gone or answered into it; so
        // may be an event that broke it (async-nats drops the connection on
        // a header block it cannot parse). Until such an event has had time
        // to come back, pull one at a time so it cannot take others along:
        // each event in the same read would be lost with the connection and
        // move one delivery closer to max_deliver with it.
        let seen = client.disconnects();
        if seen != disconnects {
            disconnects = seen;
            pulls.forget();
            careful_until = Some(Instant::now() + careful_period);
            tracing::info!(
                consumer = %group,
                period_ms = careful_period.as_millis() as u64,
                "connection lost; pulling one event at a time for a redelivery period"
            );
        }
        if careful_until.is_some_and(|until| Instant::now() >= until) {
            careful_until = None;
        }
        let careful = careful_until.is_some();

        let batch = if careful {
            usize::from(pulls.outstanding() == 0 && waiting.len() < prefetch)
        } else {
            let room = prefetch.saturating_sub(waiting.len() + pulls.outstanding());
            // Top up by half the prefetch at least: fewer, larger pulls.
            if room > 0 && (pulls.outstanding() == 0 || room >= prefetch.div_ceil(2)) {
                room
            } else {
                0
            }
        };
        if batch > 0 && !connected(&client, &group, &mut disconnected_since) {
            // A pull sent while disconnected waits in the client and goes
            // out on reconnect, long after it stopped being counted; the
            // housekeeping tick looks again.
        } else if batch > 0 {
            let reply = inbox.next_reply();
            let request = pull::BatchConfig {
                batch,
                expires: Some(expiry),
                ..Default::default()
            };
            let sent = tokio::select! {
                biased;
                () = signal.clone() => break 'pulling Ok(()),
                sent = tokio::time::timeout(
                    expiry + PULL_GRACE,
                    pull_consumer.request_batch(request, reply.clone().into()),
                ) => sent,
            };
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("the client did not take the pull request".to_owned()),
            };
            if let Some(error) = failure {
                tracing::warn!(consumer = %group, error, "pull request failed; recovering the consumer");
                pulls.forget();
                if let Some(end) = recovery.restore(&mut pull_consumer, &mut tasks).await {
                    break 'pulling end;
                }
                continue;
            }
            pulls.sent(reply, batch, Instant::now() + expiry + PULL_GRACE);
        }

        let mut pull_over = false;
        tokio::select! {
            biased;
            () = &mut stopping => break 'pulling Ok(()),
            // Before the others: it is ready only every HOUSEKEEPING, and a
            // busy inbox must not starve it.
            _ = housekeeping.tick() => {
                // The watchdog: a pull the server forgot (restart, lost
                // connection) would otherwise be counted forever. Whatever
                // the server still sends for it arrives on the inbox and is
                // handled all the same.
                if pulls.drop_overdue(Instant::now()) {
                    tracing::warn!(consumer = %group, "pull request overdue; pulling again");
                    pull_over = true;
                }
                keep_waiting_alive(&mut waiting, progress_interval).await;
                if Instant::now() >= filter_check {
                    filter_check = Instant::now() + group_filter::CHECK_INTERVAL;
                    if let Some(end) = recovery
                        .check_filter(&mut pull_consumer, &mut tasks, &mut drift)
                        .await
                    {
                        break 'pulling end;
                    }
                }
            }
            // A handler finished: its slot takes the next waiting event.
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
            incoming = inbox.subscription.next() => {
                // Take what else is already here in the same turn: one pass
                // of this loop per batch rather than per event.
                let mut next = Some(incoming);
                let mut taken = 0usize;
                let arrived = Instant::now();
                while let Some(incoming) = next.take() {
                    let Some(incoming) = incoming else {
                        // Only a closed client ends the subscription.
                        match Inbox::subscribe(&client).await {
                            Ok(renewed) => {
                                tracing::warn!(consumer = %group, "pull inbox was closed; subscribed again");
                                inbox = renewed;
                                pulls.forget();
                                continue 'pulling;
                            }
                            Err(err) => break 'pulling Err(err),
                        }
                    };
                    match classify(incoming, client.jetstream()) {
                        Incoming::Event(message) => {
                            pulls.received();
                            received_since_check += 1;
                            waiting.push_back(Waiting { message, since: arrived });
                        }
                        Incoming::Status { reply, status } if pulls.contains(&reply) => match status {
                            PullStatus::Ended => {
                                pulls.end(&reply);
                                pull_over = true;
                            }
                            PullStatus::Heartbeat => {}
                            PullStatus::Refused(status) => {
                                tracing::warn!(consumer = %group, status, "pull refused; recovering the consumer");
                                pulls.forget();
                                if let Some(end) = recovery.restore(&mut pull_consumer, &mut tasks).await {
                                    break 'pulling end;
                                }
                                break;
                            }
                        },
                        // A status for a pull already given up.
                        Incoming::Status { .. } => {}
                    }
                    taken += 1;
                    if taken < MAX_TAKEN_AT_ONCE {
                        next = inbox.subscription.next().now_or_never();
                    }
                }
            }
        }

        if !pull_over {
            continue;
        }
        if received_since_check > 0 {
            received_since_check = 0;
            health = Health::default();
            continue;
        }
        let check = tokio::select! {
            biased;
            () = signal.clone() => break 'pulling Ok(()),
            check = alongside(&mut tasks, watchdog(&mut pull_consumer, &group)) => check,
        };
        if health.recreate_after(check, &group) {
            health = Health::default();
            pulls.forget();
            if let Some(end) = recovery.restore(&mut pull_consumer, &mut tasks).await {
                break 'pulling end;
            }
        }
    };

    // Events here but not started go back now, not after their ack wait.
    let mut undelivered: Vec<jetstream::Message> =
        waiting.into_iter().map(|waiting| waiting.message).collect();
    while let Some(Some(incoming)) = inbox.subscription.next().now_or_never() {
        if let Incoming::Event(message) = classify(incoming, client.jetstream()) {
            undelivered.push(message);
        }
    }
    for message in undelivered {
        let _ = message.ack_with(AckKind::Nak(Some(Duration::ZERO))).await;
    }
    drop(inbox);
    shutdown(&client, &shared.settings, tasks, stop).await;
    result
}

/// An event received and not yet handed to a handler.
struct Waiting {
    message: jetstream::Message,
    /// When it came, or when it last got an in-progress ack.
    since: Instant,
}

/// In-progress acks for events that wait longer than running handlers may
/// go without one: a slow handler must not let the prefetched events behind
/// it be redelivered to another instance.
async fn keep_waiting_alive(waiting: &mut VecDeque<Waiting>, interval: Duration) {
    let now = Instant::now();
    for event in waiting.iter_mut() {
        if now.duration_since(event.since) >= interval {
            event.since = now;
            if let Err(err) = event.message.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %err, "in-progress ack of a waiting event failed");
            }
        }
    }
}

/// The pull requests still open, oldest first, and how many events each may
/// still bring.
#[derive(Default)]
struct Pulls {
    open: VecDeque<Pull>,
}

struct Pull {
    reply: String,
    remaining: usize,
    deadline: Instant,
}

impl Pulls {
    fn sent(&mut self, reply: String, batch: usize, deadline: Instant) {
        self.open.push_back(Pull {
            reply,
            remaining: batch,
            deadline,
        });
    }

    /// Events still to come for the open pulls.
    fn outstanding(&self) -> usize {
        self.open.iter().map(|pull| pull.remaining).sum()
    }

    /// One event came. Events carry their own subject, not the pull's, but
    /// the server serves a consumer's pulls in order: it counts against the
    /// oldest.
    fn received(&mut self) {
        if let Some(oldest) = self.open.front_mut() {
            oldest.remaining = oldest.remaining.saturating_sub(1);
            if oldest.remaining == 0 {
                // The server sends no end-of-pull status once a pull is filled.
                self.open.pop_front();
            }
        }
    }

    fn contains(&self, reply: &str) -> bool {
        self.open.iter().any(|pull| pull.reply == reply)
    }

    fn end(&mut self, reply: &str) {
        self.open.retain(|pull| pull.reply != reply);
    }

    /// Drops the pulls past their deadline; true when there were any.
    fn drop_overdue(&mut self, now: Instant) -> bool {
        let before = self.open.len();
        self.open.retain(|pull| pull.deadline > now);
        self.open.len() != before
    }

    fn forget(&mut self) {
        self.open.clear();
    }
}

/// Whether the loop should recreate the consumer after pulls that brought
/// nothing, from what the watchdog saw this time and the times before.
#[derive(Default)]
struct Health {
    suspicious_pulls: u32,
    failed_checks: u32,
}

impl Health {
    fn recreate_after(&mut self, check: Watchdog, group: &str) -> bool {
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

/// The one inbox every pull of a runner is answered on: pull `n` replies to
/// `{prefix}.{n}`, all through one wildcard subscription that lives as long
/// as the runner (the client renews it on reconnect). An event the server
/// sends for a pull the loop already gave up on (its request held up by a
/// stalled network, or sent late after a reconnect) still arrives here;
/// with an inbox per pull it would go to a dropped subscription and stay
/// unacked until the ack wait.
struct Inbox {
    prefix: String,
    subscription: async_nats::Subscriber,
    pulls: u64,
}

impl Inbox {
    async fn subscribe(client: &Client) -> Result<Self, ConsumeError> {
        let prefix = client.nats().new_inbox();
        let subscription = tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            client.nats().subscribe(format!("{prefix}.*")),
        )
        .await
        .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?
        .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?;
        Ok(Self {
            prefix,
            subscription,
            pulls: 0,
        })
    }

    /// The reply subject of the next pull.
    fn next_reply(&mut self) -> String {
        self.pulls += 1;
        format!("{}.{}", self.prefix, self.pulls)
    }
}

/// What came in on the pull inbox.
// Matched as soon as it is built, never stored: boxing the event would
// only add an allocation per delivery.
#[allow(clippy::large_enum_variant)]
enum Incoming {
    Event(jetstream::Message),
    /// A status about the pull replied to on `reply`.
    Status {
        reply: String,
        status: PullStatus,
    },
}

enum PullStatus {
    /// The pull is over: expired, or nothing to deliver.
    Ended,
    Heartbeat,
    /// The server refused the pull (consumer gone, leader change, no
    /// responders).
    Refused(String),
}

fn classify(message: async_nats::Message, context: &jetstream::Context) -> Incoming {
    use async_nats::StatusCode;
    let status = match message.status {
        None | Some(StatusCode::OK) => {
            return Incoming::Event(jetstream::Message {
                message,
                context: context.clone(),
            })
        }
        Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => PullStatus::Ended,
        Some(StatusCode::IDLE_HEARTBEAT) => PullStatus::Heartbeat,
        Some(status) => PullStatus::Refused(match &message.description {
            Some(description) => format!("{status} {description}"),
            None => status.to_string(),
        }),
    };
    Incoming::Status {
        reply: message.subject.to_string(),
        status,
    }
}

/// Whether the client is connected, saying so now and then while it is not.
fn connected(client: &Client, group: &str, disconnected_since: &mut Option<Instant>) -> bool {
    use async_nats::connection::State;
    if client.nats().connection_state() == State::Connected {
        *disconnected_since = None;
        return true;
    }
    let now = Instant::now();
    match disconnected_since {
        None => {
            tracing::debug!(consumer = %group, "not connected; pulling waits for the connection");
            *disconnected_since = Some(now);
        }
        Some(since) if now.duration_since(*since) >= DISCONNECTED_REPORT => {
            tracing::warn!(consumer = %group, "still not connected; no events are consumed");
            *disconnected_since = Some(now);
        }
        Some(_) => {}
    }
    false
}

/// Lets in-flight handlers finish within the grace period, then tells the
/// rest to Nak and stop, and flushes the acks.
async fn shutdown(
    client: &Client,
    settings: &Settings,
    mut tasks: FuturesUnordered<impl Future<Output = ()>>,
    stop: watch::Sender<bool>,
) {
    let drain = async { while tasks.next().await.is_some() {} };
    if tokio::time::timeout(settings.shutdown_grace, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.len(),
            "shutdown grace over; Naking the events of handlers still running"
        );
        let _ = stop.send(true);
        let settle = async { while tasks.next().await.is_some() {} };
        let _ = tokio::time::timeout(STOP_GRACE, settle).await;
    }
    if let Err(err) = client.nats().flush().await {
        tracing::warn!(error = %err, "flushing acks on shutdown failed");
    }
}

enum Watchdog {
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
async fn watchdog(consumer: &mut jetstream::consumer::PullConsumer, group: &str) -> Watchdog {
    let info = match tokio::time::timeout(CHECK_TIMEOUT, consumer.info()).await {
        Ok(info) => info,
        Err(_) => return Watchdog::Unknown("consumer info timed out".to_owned()),
    };
    match info {
        Ok(info) => {
            let max_ack_pending =
                usize::try_from(info.config.max_ack_pending).unwrap_or(usize::MAX);
            let room = max_ack_pending == 0 || info.num_ack_pending < max_ack_pending;
            if info.num_pending > 0 && room {
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

/// Awaits `work` while the running handlers go on: they are futures of the
/// loop's own task, and would stand still (timers, I/O, their acks) for as
/// long as a recovery or a consumer check takes.
async fn alongside<T, F>(tasks: &mut FuturesUnordered<T>, work: F) -> F::Output
where
    T: Future<Output = ()>,
    F: Future,
{
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
        }
    }
}

/// What recovering the durable consumer needs, in one place for the loop's
/// three recovery points.
struct Recovery<'a> {
    client: &'a Client,
    stream: &'a str,
    group_filter: &'a GroupFilter,
    signal: &'a Signal,
}

impl Recovery<'_> {
    /// [`recover`] into `consumer`, the running handlers going on meanwhile;
    /// `Some` with the runner's result when it must end instead (shutdown,
    /// or the stream is gone).
    async fn restore<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
    ) -> Option<Result<(), ConsumeError>> {
        let recovered = recover(self.client, self.stream, self.group_filter, self.signal);
        match alongside(tasks, recovered).await {
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
    async fn check_filter<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
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
        match alongside(tasks, checked).await {
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
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
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
        delay = (delay * 2).min(MAX_RECOVERY_DELAY);
    }
}

/// How a delivery ends.
enum Decision {
    Ack,
    /// A handler run failed transiently with attempts left: record the
    /// failed runs, then Nak with the retry delay.
    Retry {
        delay: Duration,
        failed_runs: u32,
    },
    /// Nak without a failed run: shutdown, or a type left for another
    /// instance.
    Nak {
        delay: Duration,
        reason: &'static str,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
        /// Failed handler runs, when they were looked up.
        failed_runs: Option<u32>,
    },
}

/// One delivery, from decoding to settling, inside its process span.
async fn process<S: Clone + Send + Sync + 'static>(
    message: jetstream::Message,
    shared: Arc<Runtime<S>>,
    stopped: watch::Receiver<bool>,
) {
    let subject = message.subject.clone();
    let (delivered, stream, stream_sequence) = match message.info() {
        Ok(info) => (
            u64::try_from(info.delivered).unwrap_or(1).max(1),
            info.stream.to_owned(),
            info.stream_sequence,
        ),
        // Only JetStream messages reach a pull consumer; if the reply subject
        // is unreadable nothing can be acked either.
        Err(_) => return,
    };
    let span = tracing::info_span!(
        "process",
        // Evaluated only for a span someone collects, like every field.
        otel.name = %format_args!("process {}", crate::subject::destination_template(&subject)),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.destination.template = %crate::subject::destination_template(&subject),
        messaging.consumer.group.name = %shared.group,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        messaging.nats.stream = %stream,
        // Signed: tracing-opentelemetry exports u64 fields as strings.
        messaging.nats.stream.sequence = i64::try_from(stream_sequence).unwrap_or(i64::MAX),
        messaging.nats.message.delivery_count = i64::try_from(delivered).unwrap_or(i64::MAX),
        cloudevents.event_id = tracing::field::Empty,
        cloudevents.event_type = tracing::field::Empty,
        cloudevents.event_source = tracing::field::Empty,
        cloudevents.event_spec_version = "1.0",
        jetevents.settle = tracing::field::Empty,
        jetevents.nak_delay_ms = tracing::field::Empty,
        jetevents.dead_letter.reason = tracing::field::Empty,
        jetevents.terminated = tracing::field::Empty,
        jetevents.unhandled = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );

    let envelope = crate::codec::decode(message.headers.as_ref(), &message.payload);
    let event_type = envelope
        .as_ref()
        .map(|envelope| envelope.event_type.clone())
        .unwrap_or_else(|_| "undecodable".to_owned());
    // Looked up once: every metric of a successful delivery records these.
    let attributes = shared.attributes.of(&event_type);
    shared.client.metrics().consumed.add(1, &attributes);
    // A disabled span (nobody collects it) has no parent to set: parsing the
    // trace context would be wasted on every delivery.
    if let (Ok(envelope), false) = (&envelope, span.is_disabled()) {
        // Before the span is first entered, so it starts as the child.
        let _ = span.set_parent(crate::trace::extract(envelope));
        span.record("messaging.message.id", envelope.id.as_str());
        span.record("cloudevents.event_id", envelope.id.as_str());
        span.record("cloudevents.event_type", envelope.event_type.as_str());
        span.record("cloudevents.event_source", envelope.source.as_str());
        if let Some(id) = envelope.correlation_id() {
            span.record("messaging.message.conversation_id", id);
        }
    }

    let work = async {
        let decision = match envelope {
            Err(err) => Decision::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                error: error_chain(&err),
                failed_runs: None,
            },
            Ok(envelope) => {
                let delivery = Delivery {
                    subject: &subject,
                    delivered,
                    stream_sequence,
                    event_type: &event_type,
                    attributes: &attributes,
                };
                decide(&shared, envelope, delivery, &message, stopped).await
            }
        };
        let failure_parts = (
            subject.as_str(),
            stream.as_str(),
            stream_sequence,
            delivered,
        );
        settle(
            &shared,
            &message,
            decision,
            failure_parts,
            &event_type,
            &attributes,
        )
        .await;
    };
    work.instrument(span).await;
}

/// What `decide` knows of a delivery besides its envelope.
struct Delivery<'a> {
    subject: &'a async_nats::Subject,
    delivered: u64,
    stream_sequence: u64,
    event_type: &'a str,
    /// The metric attributes of a successful delivery of this type.
    attributes: &'a Arc<[KeyValue]>,
}

/// Runs the handler (with in-progress acks) and decides how to settle.
async fn decide<S: Clone + Send + Sync + 'static>(
    shared: &Runtime<S>,
    envelope: crate::envelope::Envelope,
    delivery: Delivery<'_>,
    message: &jetstream::Message,
    mut stopped: watch::Receiver<bool>,
) -> Decision {
    let Delivery {
        subject,
        delivered,
        stream_sequence,
        event_type,
        attributes,
    } = delivery;
    let retry = &shared.settings.retry;
    let (event, handler) = match shared.router.resolve(&envelope) {
        Resolved::Handle { event, handler } => (event, handler),
        Resolved::Undecodable(err) => {
            return Decision::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                error: error_chain(err.as_ref()),
                failed_runs: None,
            }
        }
        Resolved::Unhandled => {
            return unhandled(shared, &envelope.event_type, delivered);
        }
    };
    // Attempts are failed handler runs, not deliveries (see `attempts`).
    let failed_before = shared.failed_runs.before(stream_sequence, delivered).await;
    if failed_before >= retry.attempts() {
        // Its last failed run was recorded but not followed by a dead
        // letter (a crash in between, or a policy with fewer attempts now).
        return Decision::DeadLetter {
            reason: DeadLetterReason::AttemptsExhausted,
            error: format!(
                "the handler failed {failed_before} times; the retry policy allows {} attempts",
                retry.attempts()
            ),
            failed_runs: Some(failed_before),
        };
    }

    let context = Context::new(
        envelope,
        subject.clone(),
        shared.group.clone(),
        delivered,
        Some(stream_sequence),
        shared.publisher.clone(),
        shared.state.clone(),
    );
    let metrics = shared.client.metrics();
    let lineage = context.lineage();
    let call = crate::publish::with_lineage(
        lineage,
        AssertUnwindSafe(handler(event, context)).catch_unwind(),
    );
    tokio::pin!(call);
    let started = std::time::Instant::now();
    let in_flight = InFlight::start(metrics.handlers_in_flight.clone(), attributes.clone());
    // Most handlers finish on their first poll: no progress timer for them,
    // and the waiting is boxed, so every delivery's future does not carry
    // its size (the runner moves each one into its set of running handlers).
    let result = match call.as_mut().now_or_never() {
        Some(result) => Some(result),
        None => {
            Box::pin(async {
                let interval = shared.progress_interval;
                let mut progress =
                    tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                loop {
                    tokio::select! {
                        result = &mut call => break Some(result),
                        _ = progress.tick() => {
                            if let Err(err) = message.ack_with(AckKind::Progress).await {
                                tracing::debug!(error = %err, "in-progress ack failed");
                            }
                        }
                        changed = stopped.changed() => {
                            if changed.is_err() || *stopped.borrow() {
                                break None;
                            }
                        }
                    }
                }
            })
            .await
        }
    };
    drop(in_flight);
    let error_type = match &result {
        None => Some("shutdown"),
        Some(Ok(Ok(()))) => None,
        Some(Ok(Err(err))) if err.is_permanent() => Some("permanent"),
        Some(Ok(Err(_))) => Some("transient"),
        Some(Err(_)) => Some("panic"),
    };
    let elapsed = started.elapsed().as_secs_f64();
    match error_type {
        None => metrics.process_duration.record(elapsed, attributes),
        Some(error) => metrics.process_duration.record(
            elapsed,
            &metric_attributes(&shared.group, event_type, Some(error)),
        ),
    }

    let failed_runs = failed_before + 1;
    let transient = |error: String, asked: Option<Duration>| {
        if retry.is_last_attempt(u64::from(failed_runs)) {
            Decision::DeadLetter {
                reason: DeadLetterReason::AttemptsExhausted,
                error,
                failed_runs: Some(failed_runs),
            }
        } else {
            Decision::Retry {
                delay: asked.unwrap_or_else(|| retry.delay(u64::from(failed_runs))),
                failed_runs,
            }
        }
    };
    let decision = match result {
        // Shutdown: let another instance take it now.
        None => Decision::Nak {
            delay: Duration::ZERO,
            reason: "shutdown",
        },
        Some(Ok(Ok(()))) => Decision::Ack,
        Some(Ok(Err(err))) if err.is_permanent() => {
            tracing::Span::current().record("error.type", "permanent");
            Decision::DeadLetter {
                reason: DeadLetterReason::Permanent,
                error: err.chain(),
                failed_runs: Some(failed_runs),
            }
        }
        Some(Ok(Err(err))) => {
            let span = tracing::Span::current();
            span.record("error.type", "transient");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", err.chain().as_str());
            transient(err.chain(), err.retry_delay())
        }
        Some(Err(panic)) => {
            let error = format!("handler panicked: {}", panic_message(panic.as_ref()));
            let span = tracing::Span::current();
            span.record("error.type", "panic");
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
            transient(error, None)
        }
    };
    // An event that ends after failed runs leaves no record behind.
    if failed_before > 0 && matches!(decision, Decision::Ack | Decision::DeadLetter { .. }) {
        shared.failed_runs.forget(stream_sequence).await;
    }
    decision
}

/// How events left for others wait: delays growing with their deliveries,
/// short enough to move on soon after the instance that handles them
/// starts, long enough not to spin while none runs.
fn unhandled_delays() -> super::RetryPolicy {
    super::RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(10)).jitter(0.0)
}

/// How long an event delivered for the `delivered`th time has been left for
/// others: the delays of its earlier deliveries.
fn left_for(delivered: u64) -> Duration {
    let delays = unhandled_delays();
    (1..delivered).map(|n| delays.delay(n)).sum()
}

/// What an instance does with an event of a type it has no handler for.
fn unhandled<S>(shared: &Runtime<S>, event_type: &str, delivered: u64) -> Decision {
    let waited = left_for(delivered);
    let (decision, action) = match shared.settings.unhandled {
        UnhandledPolicy::AckAfter(after) if waited >= after => (Decision::Ack, "ack"),
        UnhandledPolicy::DeadLetterAfter(after) if waited >= after => (
            Decision::DeadLetter {
                reason: DeadLetterReason::Unhandled,
                error: format!(
                    "no handler for type {event_type}; left for other instances for {}s",
                    waited.as_secs()
                ),
                failed_runs: None,
            },
            "dead_letter",
        ),
        _ => (
            Decision::Nak {
                delay: unhandled_delays().delay(delivered),
                reason: "unhandled",
            },
            "leave",
        ),
    };
    let mut attributes = metric_attributes(&shared.group, event_type, None);
    attributes.push(KeyValue::new("jetevents.unhandled.action", action));
    shared.client.metrics().unhandled.add(1, &attributes);
    tracing::Span::current().record("jetevents.unhandled", action);
    decision
}

/// Acks, Naks or dead-letters, and records the outcome on the span.
async fn settle<S>(
    shared: &Runtime<S>,
    message: &jetstream::Message,
    decision: Decision,
    (subject, stream, stream_sequence, delivered): (&str, &str, u64, u64),
    event_type: &str,
    attributes: &[KeyValue],
) {
    let span = tracing::Span::current();
    let metrics = shared.client.metrics();
    match decision {
        Decision::Ack => {
            span.record("jetevents.settle", "ack");
            let acked = match shared.settings.ack_mode {
                AckMode::Ack => message.ack().await,
                AckMode::Confirmed => Box::pin(message.double_ack()).await,
            };
            if let Err(err) = acked {
                span.record("otel.status_code", "ERROR");
                span.record(
                    "otel.status_description",
                    format!("ack failed: {err}").as_str(),
                );
                tracing::warn!(error = %err, "ack failed; the event will be redelivered");
            }
        }
        Decision::Retry { delay, failed_runs } => {
            metrics.consume_retries.add(1, attributes);
            // Before the Nak: the next delivery, on any instance, reads it.
            Box::pin(async {
                shared
                    .failed_runs
                    .record(stream_sequence, failed_runs)
                    .await;
                nak(&span, message, delay, "transient").await
            })
            .await
        }
        Decision::Nak { delay, reason } => Box::pin(nak(&span, message, delay, reason)).await,
        Decision::DeadLetter {
            reason,
            error,
            failed_runs,
        } => {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
            span.record("jetevents.dead_letter.reason", reason.as_str());
            if matches!(
                reason,
                DeadLetterReason::Undecodable | DeadLetterReason::Unhandled
            ) {
                // Handler failures recorded theirs in `decide`.
                span.record("error.type", reason.as_str());
            }
            let failure = Failure {
                reason,
                error: &error,
                subject,
                stream,
                stream_sequence,
                consumer: &shared.group,
                delivery_count: delivered,
                failed_runs,
            };
            // Boxed: the copy's publish future is large, and every delivery's
            // future would carry its size while almost none take this path.
            match Box::pin(copy_to_dead_letters(shared, message, &failure)).await {
                Ok(()) => {
                    span.record("jetevents.settle", "dead_letter");
                    metrics.dead_lettered.add(
                        1,
                        &metric_attributes(
                            &shared.group,
                            event_type,
                            Some(failure.reason.as_str()),
                        ),
                    );
                    tracing::warn!(reason = %failure.reason, error = %error, "event dead-lettered");
                    match message.ack_with(AckKind::Term).await {
                        Ok(()) => {
                            span.record("jetevents.terminated", true);
                        }
                        Err(err) => {
                            span.record("jetevents.terminated", false);
                            tracing::warn!(error = %err, "term after dead-lettering failed");
                        }
                    }
                }
                Err(err) => {
                    // Keep the event: it comes back and is dead-lettered then
                    // (the copy's message id makes a second copy a no-op).
                    tracing::error!(error = %err, "dead-lettering failed; Naking instead");
                    let delay = shared
                        .settings
                        .retry
                        .delay(u64::from(failed_runs.unwrap_or(1)));
                    nak(&span, message, delay, "dead_letter_failed").await;
                }
            }
        }
    }
}

async fn nak(span: &tracing::Span, message: &jetstream::Message, delay: Duration, reason: &str) {
    span.record("jetevents.settle", "nak");
    span.record(
        "jetevents.nak_delay_ms",
        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
    );
    tracing::debug!(delay_ms = delay.as_millis() as u64, reason, "event Naked");
    // Always with a delay (zero only on shutdown): a bare Nak redelivers at
    // once and a failing handler would spin.
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %err, "nak failed; the event comes back after the ack wait");
    }
}

async fn copy_to_dead_letters<S>(
    shared: &Runtime<S>,
    message: &jetstream::Message,
    failure: &Failure<'_>,
) -> Result<(), crate::error::BoxError> {
    let (subject, headers) = dead_letter::dead_letter_message(
        &shared.settings.dead_letter,
        message.headers.as_ref(),
        failure,
        Utc::now(),
    );
    shared
        .client
        .jetstream()
        .publish_with_headers(subject, headers, message.payload.clone())
        .await?
        .await?;
    Ok(())
}

/// One running handler in the in-flight gauge, taken out again when dropped
/// (also when the task is aborted).
struct InFlight {
    counter: opentelemetry::metrics::UpDownCounter<i64>,
    attributes: Arc<[KeyValue]>,
}

impl InFlight {
    fn start(
        counter: opentelemetry::metrics::UpDownCounter<i64>,
        attributes: Arc<[KeyValue]>,
    ) -> Self {
        counter.add(1, &attributes);
        Self {
            counter,
            attributes,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.add(-1, &self.attributes);
    }
}

/// Most bound on the event types whose attributes are kept: pattern
/// handlers can see any number of types.
const MAX_CACHED_TYPES: usize = 1024;

/// The metric attributes of successful deliveries, built once per event
/// type: each delivery records several metrics with the same ones.
struct AttributeCache {
    group: String,
    by_type: std::sync::Mutex<HashMap<String, Arc<[KeyValue]>>>,
}

impl AttributeCache {
    fn new(group: &str) -> Self {
        Self {
            group: group.to_owned(),
            by_type: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn of(&self, event_type: &str) -> Arc<[KeyValue]> {
        // A panic while holding the lock cannot leave the map half-written.
        let mut by_type = self
            .by_type
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(attributes) = by_type.get(event_type) {
            return attributes.clone();
        }
        let attributes: Arc<[KeyValue]> = metric_attributes(&self.group, event_type, None).into();
        if by_type.len() < MAX_CACHED_TYPES {
            by_type.insert(event_type.to_owned(), attributes.clone());
        }
        attributes
    }
}

/// Low-cardinality metric attributes of one delivery: never the subject
/// (it carries keys) or the event id.
pub(super) fn metric_attributes(
    group: &str,
    event_type: &str,
    error: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.consumer.group.name", group.to_owned()),
        KeyValue::new("cloudevents.event_type", event_type.to_owned()),
    ];
    if let Some(error) = error {
        attributes.push(KeyValue::new("error.type", error.to_owned()));
    }
    attributes
}

/// An error and its causes on one line.
/// The error and its causes on one line. Many errors (ours, async-nats's)
/// already print their source in `Display`: a cause whose text is already
/// there is not repeated.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
