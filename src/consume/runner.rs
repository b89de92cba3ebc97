//! The pull loop and the life of one delivery: decode, route, handle, settle.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
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
use super::handler::HandlerError;
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
    reporter: SettleReporter,
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
        replicas,
    } = consumer;
    let failed_runs = FailedRuns::open(&client, &stream, &group, replicas).await;
    let shared = Arc::new(Runtime {
        failed_runs,
        publisher: client.publisher(),
        client: client.clone(),
        group: Arc::from(group.as_str()),
        router,
        state,
        progress_interval: settings.progress_interval(),
        attributes: AttributeCache::new(&group),
        reporter: SettleReporter::new(&client, &group),
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
        shared: &shared,
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
            let request = tokio::time::timeout(
                expiry + PULL_GRACE,
                pull_consumer.request_batch(request, reply.clone().into()),
            );
            let sent = tokio::select! {
                biased;
                () = signal.clone() => break 'pulling Ok(()),
                sent = alongside(&mut tasks, &mut waiting, &shared, request) => sent,
            };
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("the client did not take the pull request".to_owned()),
            };
            if let Some(error) = failure {
                tracing::warn!(consumer = %group, error, "pull request failed; recovering the consumer");
                pulls.forget();
                if let Some(end) = recovery
                    .restore(&mut pull_consumer, &mut tasks, &mut waiting)
                    .await
                {
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
                keep_waiting_alive(&mut waiting, &shared);
                if Instant::now() >= filter_check {
                    filter_check = Instant::now() + group_filter::CHECK_INTERVAL;
                    if let Some(end) = recovery
                        .check_filter(&mut pull_consumer, &mut tasks, &mut waiting, &mut drift)
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
                        match alongside(&mut tasks, &mut waiting, &shared, Inbox::subscribe(&client)).await {
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
                            waiting.push_back(Waiting::new(message, arrived));
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
                                if let Some(end) = recovery.restore(&mut pull_consumer, &mut tasks, &mut waiting).await {
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
            check = alongside(&mut tasks, &mut waiting, &shared, watchdog(&mut pull_consumer, &group)) => check,
        };
        if health.recreate_after(check, &group) {
            health = Health::default();
            pulls.forget();
            if let Some(end) = recovery
                .restore(&mut pull_consumer, &mut tasks, &mut waiting)
                .await
            {
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
    drop(inbox);
    shutdown(&shared, undelivered, tasks, stop).await;
    result
}

/// An event received and not yet handed to a handler.
struct Waiting {
    message: jetstream::Message,
    arrived: Instant,
    /// When it came, or when it last got an in-progress ack.
    since: Instant,
    progress: ProgressAck,
}

impl Waiting {
    fn new(message: jetstream::Message, arrived: Instant) -> Self {
        Self {
            message,
            arrived,
            since: arrived,
            progress: ProgressAck::default(),
        }
    }
}

/// Keeps the events waiting for a free handler: in-progress acks for those
/// that wait longer than running handlers may go without one (a slow
/// handler must not let the prefetched events behind it be redelivered to
/// another instance), but not without bound: an event that waited longer
/// than the handler timeout sits behind handlers that are slow or hung, and
/// is Naked without delay so another instance of the group takes it.
///
/// Awaits nothing: the loop calls it, and while the loop waits no handler
/// is polled.
fn keep_waiting_alive<S>(waiting: &mut VecDeque<Waiting>, shared: &Runtime<S>) {
    let now = Instant::now();
    // The queue is in order of arrival: the overdue ones are in front.
    while let Some(event) = waiting.pop_front() {
        if now.duration_since(event.arrived) < shared.settings.handler_timeout {
            waiting.push_front(event);
            break;
        }
        tracing::warn!(
            consumer = %shared.group,
            stream_sequence = sequence_of(&event.message),
            "event waited longer than the handler timeout for a free handler; Naking it for \
             another instance"
        );
        tokio::spawn(nak_now(
            shared.reporter.clone(),
            event.message,
            "the event comes back after the ack wait",
        ));
    }
    let mut context = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    for event in waiting.iter_mut() {
        if let Poll::Ready(Err(err)) = event.progress.poll_sent(&mut context) {
            shared.reporter.failed(
                sequence_of(&event.message),
                SettleOperation::Progress,
                &err,
                "the event may be redelivered while it waits",
            );
        }
        if now.duration_since(event.since) >= shared.progress_interval {
            event.since = now;
            event.progress.start(&event.message);
        }
    }
}

/// One event's in-progress ack on its way into the client. At most one per
/// event: while the client's queue is full (a stalled or lost connection)
/// more would only queue behind it. Polled next to what the caller waits
/// for, never awaited on its own, so a full queue holds up nothing else.
#[derive(Default)]
struct ProgressAck {
    sending: Option<BoxFuture<'static, Result<(), async_nats::PublishError>>>,
}

impl ProgressAck {
    /// Sends one, unless the last one is still waiting for the client.
    fn start(&mut self, message: &jetstream::Message) {
        if self.sending.is_some() {
            return;
        }
        // Every JetStream delivery has one: it is how it is acked.
        let Some(reply) = message.message.reply.clone() else {
            return;
        };
        let client = message.context.client();
        self.sending =
            Some(async move { client.publish(reply, AckKind::Progress.into()).await }.boxed());
    }

    fn is_sending(&self) -> bool {
        self.sending.is_some()
    }

    /// Ready with the outcome once the client took (or refused) the ack.
    fn poll_sent(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), async_nats::PublishError>> {
        let Some(sending) = self.sending.as_mut() else {
            return Poll::Pending;
        };
        let sent = futures_util::ready!(sending.as_mut().poll(context));
        self.sending = None;
        Poll::Ready(sent)
    }
}

/// The stream sequence of a delivery, for reports (0 if it has none).
fn sequence_of(message: &jetstream::Message) -> u64 {
    message.info().map_or(0, |info| info.stream_sequence)
}

/// Naks `message` without delay; a failure is reported with `consequence`.
async fn nak_now(reporter: SettleReporter, message: jetstream::Message, consequence: &'static str) {
    if let Err(err) = message.ack_with(AckKind::Nak(Some(Duration::ZERO))).await {
        reporter.failed(
            sequence_of(&message),
            SettleOperation::Nak,
            &err,
            consequence,
        );
    }
}

/// What the runner sends about an event, as the settle-failure metric
/// names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SettleOperation {
    Ack,
    Nak,
    Term,
    Progress,
    DeadLetter,
}

impl SettleOperation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Term => "term",
            Self::Progress => "progress",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// Reports what the runner failed to send about an event: at `WARN` with
/// the group and the stream sequence, and in
/// `jetevents.consume.settle_failures`. None may fail silently: each
/// changes what happens to the event next.
#[derive(Clone)]
pub(super) struct SettleReporter {
    metrics: crate::metrics::Metrics,
    group: Arc<str>,
}

impl SettleReporter {
    pub(super) fn new(client: &Client, group: &str) -> Self {
        Self {
            metrics: client.metrics().clone(),
            group: Arc::from(group),
        }
    }

    pub(super) fn failed(
        &self,
        stream_sequence: u64,
        operation: SettleOperation,
        error: &dyn std::fmt::Display,
        consequence: &str,
    ) {
        let operation = operation.as_str();
        tracing::warn!(
            consumer = %self.group,
            stream_sequence,
            operation,
            error = %error,
            "{operation} failed; {consequence}"
        );
        self.metrics.settle_failures.add(
            1,
            &[
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.consumer.group.name", self.group.to_string()),
                KeyValue::new("operation", operation),
            ],
        );
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

/// Naks the events received but not started, lets in-flight handlers
/// finish within the grace period, then tells the rest to Nak and stop,
/// and flushes the acks.
async fn shutdown<S>(
    shared: &Runtime<S>,
    undelivered: Vec<jetstream::Message>,
    mut tasks: FuturesUnordered<impl Future<Output = ()>>,
    stop: watch::Sender<bool>,
) {
    let settings = &shared.settings;
    let deadline = Instant::now() + settings.shutdown_grace;
    // Side by side with the handlers: a Nak waiting for room in the
    // client's queue must not hold them up, nor they it.
    let give_back = futures_util::future::join_all(undelivered.into_iter().map(|message| {
        let sequence = sequence_of(&message);
        let nak = nak_now(
            shared.reporter.clone(),
            message,
            "the event comes back after the ack wait",
        );
        async move {
            if tokio::time::timeout_at(deadline, nak).await.is_err() {
                shared.reporter.failed(
                    sequence,
                    SettleOperation::Nak,
                    &"not sent within the shutdown grace",
                    "the event comes back after the ack wait",
                );
            }
        }
    }));
    let drain = tokio::time::timeout_at(deadline, async { while tasks.next().await.is_some() {} });
    let (_, drained) = futures_util::future::join(give_back, drain).await;
    if drained.is_err() {
        tracing::warn!(
            consumer = %shared.group,
            in_flight = tasks.len(),
            "shutdown grace over; Naking the events of handlers still running"
        );
        // An error means no handler is left to tell.
        let _ = stop.send(true);
        let settle = async { while tasks.next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, settle).await.is_err() {
            tracing::warn!(
                consumer = %shared.group,
                in_flight = tasks.len(),
                "handlers still settling after the stop grace; their events come back after \
                 the ack wait"
            );
        }
    }
    if let Err(err) = shared.client.nats().flush().await {
        tracing::warn!(consumer = %shared.group, error = %err, "flushing acks on shutdown failed");
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

/// Awaits `work` while the running handlers go on and the waiting events
/// are kept alive: handlers are futures of the loop's own task, and would
/// stand still (timers, I/O, their acks) for as long as a pull request, a
/// recovery or a consumer check takes (seconds, when the connection stalls).
async fn alongside<S, T, F>(
    tasks: &mut FuturesUnordered<T>,
    waiting: &mut VecDeque<Waiting>,
    shared: &Runtime<S>,
    work: F,
) -> F::Output
where
    T: Future<Output = ()>,
    F: Future,
{
    tokio::pin!(work);
    let mut housekeeping = tokio::time::interval_at(Instant::now() + HOUSEKEEPING, HOUSEKEEPING);
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = housekeeping.tick() => keep_waiting_alive(waiting, shared),
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
        }
    }
}

/// What recovering the durable consumer needs, in one place for the loop's
/// three recovery points.
struct Recovery<'a, S> {
    shared: &'a Runtime<S>,
    client: &'a Client,
    stream: &'a str,
    group_filter: &'a GroupFilter,
    signal: &'a Signal,
}

impl<S> Recovery<'_, S> {
    /// [`recover`] into `consumer`, the running handlers going on meanwhile;
    /// `Some` with the runner's result when it must end instead (shutdown,
    /// or the stream is gone).
    async fn restore<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
        waiting: &mut VecDeque<Waiting>,
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
    async fn check_filter<T: Future<Output = ()>>(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
        tasks: &mut FuturesUnordered<T>,
        waiting: &mut VecDeque<Waiting>,
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
        Err(err) => {
            tracing::warn!(
                consumer = %shared.group,
                subject = %subject,
                error = %err,
                "delivery without JetStream metadata cannot be handled or acked; dropped"
            );
            return;
        }
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
    stopped: watch::Receiver<bool>,
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
    let timeout = handler
        .options
        .handler_timeout()
        .unwrap_or(shared.settings.handler_timeout);
    let call = crate::publish::with_lineage(
        lineage,
        AssertUnwindSafe((handler.call)(event, context)).catch_unwind(),
    );
    let started = std::time::Instant::now();
    let in_flight = InFlight::start(metrics.handlers_in_flight.clone(), attributes.clone());
    let keep_alive = KeepAlive {
        message,
        interval: shared.progress_interval,
        reporter: &shared.reporter,
        stream_sequence,
    };
    let result = run_handler(call, timeout, keep_alive, stopped).await;
    drop(in_flight);
    let error_type = match &result {
        Ended::Stopped => Some("shutdown"),
        Ended::Returned(Ok(())) => None,
        Ended::Returned(Err(err)) if err.is_permanent() => Some("permanent"),
        Ended::Returned(Err(_)) => Some("transient"),
        Ended::Panicked(_) => Some("panic"),
        Ended::TimedOut(_) => Some("timeout"),
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
        Ended::Stopped => Decision::Nak {
            delay: Duration::ZERO,
            reason: "shutdown",
        },
        Ended::Returned(Ok(())) => Decision::Ack,
        Ended::Returned(Err(err)) if err.is_permanent() => {
            tracing::Span::current().record("error.type", "permanent");
            Decision::DeadLetter {
                reason: DeadLetterReason::Permanent,
                error: err.chain(),
                failed_runs: Some(failed_runs),
            }
        }
        Ended::Returned(Err(err)) => {
            record_retried_failure("transient", &err.chain());
            transient(err.chain(), err.retry_delay())
        }
        Ended::Panicked(panic) => {
            let error = format!("handler panicked: {}", panic_message(panic.as_ref()));
            record_retried_failure("panic", &error);
            transient(error, None)
        }
        Ended::TimedOut(after) => {
            let error = format!("handler timed out after {after:?}");
            record_retried_failure("timeout", &error);
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
    super::RetryPolicy::exponential(Duration::from_millis(250), Duration::from_secs(5)).jitter(0.0)
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

/// Records on the process span a handler failure that is retried.
fn record_retried_failure(error_type: &str, error: &str) {
    let span = tracing::Span::current();
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error);
}

/// How a handler call ended.
enum Ended {
    Returned(Result<(), HandlerError>),
    Panicked(Box<dyn Any + Send>),
    /// Cancelled after running this long.
    TimedOut(Duration),
    /// Cancelled by a shutdown.
    Stopped,
}

impl From<Result<Result<(), HandlerError>, Box<dyn Any + Send>>> for Ended {
    fn from(caught: Result<Result<(), HandlerError>, Box<dyn Any + Send>>) -> Self {
        match caught {
            Ok(returned) => Self::Returned(returned),
            Err(panic) => Self::Panicked(panic),
        }
    }
}

/// The in-progress acks of a running handler's event.
struct KeepAlive<'a> {
    message: &'a jetstream::Message,
    interval: Duration,
    reporter: &'a SettleReporter,
    stream_sequence: u64,
}

/// Runs a handler call to its end: its result, its timeout or shutdown.
///
/// Its event gets in-progress acks meanwhile, sent next to the call rather
/// than before it: an ack waiting for room in the client's queue (a stalled
/// connection) must not stop the call from being polled. On timeout the
/// call is dropped, and with it the acks.
async fn run_handler<C>(
    call: C,
    timeout: Duration,
    keep_alive: KeepAlive<'_>,
    mut stopped: watch::Receiver<bool>,
) -> Ended
where
    C: Future<Output = Result<Result<(), HandlerError>, Box<dyn Any + Send>>>,
{
    tokio::pin!(call);
    // Most handlers finish on their first poll: no timers for them, and the
    // waiting is boxed, so every delivery's future does not carry its size
    // (the runner moves each one into its set of running handlers).
    if let Some(caught) = call.as_mut().now_or_never() {
        return caught.into();
    }
    Box::pin(async {
        let KeepAlive {
            message,
            interval,
            reporter,
            stream_sequence,
        } = keep_alive;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut progress = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut progress_ack = ProgressAck::default();
        loop {
            tokio::select! {
                caught = &mut call => break caught.into(),
                () = &mut deadline => break Ended::TimedOut(timeout),
                _ = progress.tick() => progress_ack.start(message),
                sent = std::future::poll_fn(|cx| progress_ack.poll_sent(cx)),
                    if progress_ack.is_sending() =>
                {
                    if let Err(err) = sent {
                        reporter.failed(
                            stream_sequence,
                            SettleOperation::Progress,
                            &err,
                            "the event may be redelivered while its handler runs",
                        );
                    }
                }
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break Ended::Stopped;
                    }
                }
            }
        }
    })
    .await
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
                shared.reporter.failed(
                    stream_sequence,
                    SettleOperation::Ack,
                    &err,
                    "the event will be redelivered",
                );
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
                nak(shared, &span, message, delay, "transient").await
            })
            .await
        }
        Decision::Nak { delay, reason } => {
            Box::pin(nak(shared, &span, message, delay, reason)).await
        }
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
                            shared.reporter.failed(
                                stream_sequence,
                                SettleOperation::Term,
                                &err,
                                "the event comes back and its copy is stored once",
                            );
                        }
                    }
                }
                Err(err) => {
                    // Keep the event: it comes back and is dead-lettered then
                    // (the copy's message id makes a second copy a no-op).
                    shared.reporter.failed(
                        stream_sequence,
                        SettleOperation::DeadLetter,
                        &err,
                        "Naking instead",
                    );
                    let delay = shared
                        .settings
                        .retry
                        .delay(u64::from(failed_runs.unwrap_or(1)));
                    nak(shared, &span, message, delay, "dead_letter_failed").await;
                }
            }
        }
    }
}

async fn nak<S>(
    shared: &Runtime<S>,
    span: &tracing::Span,
    message: &jetstream::Message,
    delay: Duration,
    reason: &str,
) {
    span.record("jetevents.settle", "nak");
    span.record(
        "jetevents.nak_delay_ms",
        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
    );
    tracing::debug!(delay_ms = delay.as_millis() as u64, reason, "event Naked");
    // Always with a delay (zero only on shutdown): a bare Nak redelivers at
    // once and a failing handler would spin.
    if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
        shared.reporter.failed(
            sequence_of(message),
            SettleOperation::Nak,
            &err,
            "the event comes back after the ack wait",
        );
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
