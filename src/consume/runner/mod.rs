//! The pull loop: it keeps pulls open, hands received events to handlers
//! within the concurrency, and recovers the durable consumer when pulls fail.
//! The life of one delivery is in [`delivery`].

mod call;
mod delivery;
mod health;
#[cfg(feature = "testing")]
pub(super) mod in_memory;
mod progress;
mod pulls;
mod settle;
mod shutdown;
mod slot;
mod unhandled;
mod waiting;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures_util::future::{BoxFuture, Shared};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::Client;
use crate::publish::Publisher;
use crate::transport::nats_delivery::{Acks, NatsDelivery};

use super::attempts::FailedRuns;
use super::group_filter;
use super::metrics::AttributeCache;
use super::stack::Handlers;
use super::{ConsumeError, Consumer, Settings, Source};
use delivery::process;
use health::{watchdog, Health, Recovery};
use pulls::{classify, connected, Inbox, Incoming, PullStatus, Pulls};
use shutdown::shutdown;
use slot::{start, FreeSlots, Running};
use waiting::{keep_waiting_alive, Waiting};

use crate::consume::settle_report::SettleReporter;
pub(super) use health::get_stream;

/// How long after its expiry a pull may stay open before the watchdog drops it.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// How often the loop looks at overdue pulls, the connection and waiting
/// events when nothing else wakes it.
const HOUSEKEEPING: Duration = Duration::from_millis(50);
/// Events and statuses taken off the inbox in one pass of the loop.
const MAX_TAKEN_AT_ONCE: usize = 64;
/// Added to the redelivery period while pulling carefully after a lost
/// connection.
const CAREFUL_MARGIN: Duration = Duration::from_secs(2);

type Signal = Shared<BoxFuture<'static, ()>>;

/// What the runner shares with every delivery task.
struct Runtime<S> {
    client: Client,
    /// Shared with every handler's context.
    publisher: Arc<Publisher>,
    group: Arc<str>,
    handlers: Handlers<S>,
    state: S,
    settings: Settings,
    progress_interval: Duration,
    attributes: AttributeCache,
    failed_runs: FailedRuns,
    reporter: SettleReporter,
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
        handlers,
        state,
        settings,
        source,
    } = consumer;
    let replicas = match &source {
        Source::Nats { replicas, .. } => *replicas,
        #[cfg(feature = "testing")]
        Source::Memory(_) => 1,
    };
    let failed_runs = FailedRuns::open(&client, &stream, &group, replicas).await;
    let shared = Arc::new(Runtime {
        failed_runs,
        publisher: Arc::new(client.publisher()),
        client: client.clone(),
        group: Arc::from(group.as_str()),
        handlers,
        state,
        progress_interval: settings.progress_interval(),
        attributes: AttributeCache::new(&group),
        reporter: SettleReporter::new(&client, &group),
        settings,
    });
    match source {
        Source::Nats {
            consumer, drift, ..
        } => {
            let pulling = Pulling {
                client,
                group,
                stream,
                filters,
                consumer: *consumer,
                drift,
            };
            pull_loop(shared, pulling, signal).await
        }
        #[cfg(feature = "testing")]
        Source::Memory(memory) => in_memory::run(shared, memory, stream, signal).await,
    }
}

/// What the pull loop works with besides the shared runtime.
struct Pulling {
    client: Client,
    group: String,
    stream: String,
    filters: Vec<String>,
    consumer: jetstream::consumer::PullConsumer,
    drift: Vec<String>,
}

/// Keeps pulls open on the durable consumer and hands what arrives to
/// handlers, until `signal`.
async fn pull_loop<S>(
    shared: Arc<Runtime<S>>,
    pulling: Pulling,
    signal: Signal,
) -> Result<(), ConsumeError>
where
    S: Clone + Send + Sync + 'static,
{
    let Pulling {
        client,
        group,
        stream,
        filters,
        consumer: mut pull_consumer,
        mut drift,
    } = pulling;
    let Some(nats) = client.nats().cloned() else {
        return Err(crate::error::Error::new(
            super::ConsumeErrorKind::Unavailable,
        ));
    };
    // Shared by every delivery: settling needs the connection and nothing
    // else of the JetStream context.
    let acks = Acks::new(nats, client.config().api_timeout);
    let group_filter = super::settings::group_filter(&group, &filters, &shared.settings);
    let mut filter_check = Instant::now() + group_filter::CHECK_INTERVAL;
    let _watch =
        super::undeliverable::watch(&client, &stream, &group, &shared.settings.dead_letter);
    let concurrency = shared.settings.concurrency;
    let prefetch = shared.settings.prefetch();
    let expiry = shared.settings.pull_expiry;
    let careful_period = shared.settings.redelivery_period() + CAREFUL_MARGIN;
    let (stop, stopped) = watch::channel(false);
    let mut tasks: Running<_> = FuturesUnordered::new();
    let mut spare = None;
    let free_slots = FreeSlots::default();
    let mut inbox = Inbox::subscribe(&client).await?;
    let mut pulls = Pulls::default();
    let mut waiting: VecDeque<Waiting<NatsDelivery>> = VecDeque::new();
    let mut health = Health::default();
    let mut received_since_check = 0usize;
    let mut disconnects = client.disconnects();
    let mut careful_until: Option<Instant> = None;
    let mut disconnected_since: Option<Instant> = None;
    // Pinned consumers: the priority group, and the pin the server gave.
    let pin_group = shared
        .settings
        .pinned
        .as_ref()
        .map(|pinned| pinned.group.clone());
    let mut pin: Option<String> = None;
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
        // As many deliveries start per pass as there are free handlers,
        // whether or not they finish at once.
        for _ in tasks.len()..concurrency {
            let Some(next) = waiting.pop_front() else {
                break;
            };
            start(
                &mut tasks,
                &mut spare,
                &free_slots,
                process(next.message, shared.clone(), stopped.clone()),
            );
        }
        let more_to_start = !waiting.is_empty() && tasks.len() < concurrency;

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

        let batch = if shared.settings.pulling_paused(tasks.len()) {
            // An open breaker: what is not pulled keeps its delivery count.
            0
        } else if careful {
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
            let mut request = pull::BatchConfig {
                batch,
                expires: Some(expiry),
                group: pin_group.clone(),
                ..Default::default()
            };
            if let Some(priority) = &shared.settings.priority {
                priority.apply(&mut request);
            }
            let request = tokio::time::timeout(
                expiry + PULL_GRACE,
                pulls::request(
                    &client,
                    &pull_consumer,
                    request,
                    pin.as_deref(),
                    reply.clone(),
                ),
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
            // Those finished by now too, in the same turn: one pass of this
            // loop per batch of deliveries rather than per delivery.
            Some(()) = tasks.next(), if !tasks.is_empty() => {
                while let Some(Some(())) = tasks.next().now_or_never() {}
            }
            // The deliveries of the last pass finished when they started:
            // their slots take the next waiting events.
            () = std::future::ready(()), if more_to_start => {}
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
                    match classify(incoming, &acks) {
                        Incoming::Event(message) => {
                            if pin_group.is_some() {
                                if let Some(given) = pulls::pin_of(&message) {
                                    pin = Some(given);
                                }
                            }
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
                            PullStatus::Unpinned => {
                                pin = None;
                                pulls.end(&reply);
                                pull_over = true;
                            }
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
            check = alongside(&mut tasks, &mut waiting, &shared, watchdog(&mut pull_consumer, &group, shared.settings.priority.as_ref())) => check,
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
    let mut undelivered: Vec<NatsDelivery> =
        waiting.into_iter().map(|waiting| waiting.message).collect();
    while let Some(Some(incoming)) = inbox.subscription.next().now_or_never() {
        if let Incoming::Event(message) = classify(incoming, &acks) {
            undelivered.push(message);
        }
    }
    drop(inbox);
    shutdown(&shared, undelivered, tasks, stop).await;
    result
}

/// Awaits `work` while the running handlers go on and the waiting events
/// are kept alive: handlers are futures of the loop's own task, and would
/// stand still (timers, I/O, their acks) for as long as a pull request, a
/// recovery or a consumer check takes (seconds, when the connection stalls).
async fn alongside<S, T, F>(
    tasks: &mut FuturesUnordered<T>,
    waiting: &mut VecDeque<Waiting<NatsDelivery>>,
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
