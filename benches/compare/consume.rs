//! Scenarios 3 and 4: consuming with typed decode and ack; end-to-end latency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::consume::{Consumer, Context, HandlerError};
use jetevents::EventType;
use tokio::sync::Notify;

use crate::common::{
    self, now_ns, order, percentile, raw_decode, raw_message, recreate_stream, wait_until,
    AppointmentBooked, Raw, RawDecoded, Side, STREAM,
};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// What a handler shares with the benchmark: a count, a target and latency
/// samples.
#[derive(Default)]
pub struct Tally {
    handled: AtomicUsize,
    target: AtomicUsize,
    reached: Notify,
    latencies_ns: Mutex<Vec<u64>>,
}

impl Tally {
    pub fn new(target: usize) -> Arc<Tally> {
        let tally = Tally::default();
        tally.target.store(target, Ordering::SeqCst);
        Arc::new(tally)
    }

    /// Counts one event; wakes the waiter at the target.
    pub fn hit(&self) {
        let handled = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if handled == self.target.load(Ordering::Acquire) {
            self.reached.notify_one();
        }
    }

    pub fn handled(&self) -> usize {
        self.handled.load(Ordering::Acquire)
    }

    pub async fn reached(&self) {
        if self.handled() >= self.target.load(Ordering::Acquire) {
            return;
        }
        self.reached.notified().await;
    }

    fn record_latency(&self, sent_at_ns: u64) {
        let latency = now_ns().saturating_sub(sent_at_ns);
        self.latencies_ns.lock().unwrap().push(latency);
    }
}

/// The filter subjects jetevents derives for the event type; the raw
/// consumer uses the same so the server does the same matching.
pub fn filters(je: &Client) -> Vec<String> {
    let ty = EventType::of::<AppointmentBooked>().expect("event type");
    je.subjects().filters_for_type(&ty)
}

/// A raw durable pull consumer on the benchmark stream.
async fn raw_consumer(raw: &Raw, name: &str, filters: Vec<String>) -> PullConsumer {
    let stream = raw.js.get_stream(STREAM).await.expect("stream");
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: AckPolicy::Explicit,
            filter_subjects: filters,
            ..Default::default()
        })
        .await
        .expect("raw consumer")
}

/// The raw consume loop: decode the `ce-*` headers and the JSON data by
/// hand, call the (no-op) handler, ack.
async fn raw_consume_loop(
    consumer: PullConsumer,
    tally: Arc<Tally>,
    record_latency: bool,
    decode: RawDecode,
) {
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(message) = messages.next().await {
        // The benchmark deletes the stream once the count is reached; an
        // error before that is a failure.
        let message = match message {
            Ok(message) => message,
            Err(err) => {
                assert!(
                    tally.handled() >= tally.target.load(Ordering::Acquire),
                    "raw consumer failed: {err}"
                );
                break;
            }
        };
        let decoded = decode(message.headers.as_ref(), &message.payload);
        if record_latency {
            tally.record_latency(decoded.event.sent_at_ns);
        }
        std::hint::black_box(&decoded);
        message.ack().await.expect("ack");
        tally.hit();
    }
}

/// Builds the jetevents consumer of the benchmark: one typed handler that
/// counts (and in scenario 4 records latency).
pub async fn jetevents_consumer(
    je: &Client,
    group: &str,
    tally: Arc<Tally>,
    record_latency: bool,
    concurrency: Option<usize>,
) -> Consumer<Arc<Tally>> {
    jetevents_consumer_on(je, STREAM, group, tally, record_latency, concurrency).await
}

/// [`jetevents_consumer`] on `stream`.
async fn jetevents_consumer_on(
    je: &Client,
    stream: &str,
    group: &str,
    tally: Arc<Tally>,
    record_latency: bool,
    concurrency: Option<usize>,
) -> Consumer<Arc<Tally>> {
    let mut builder = Consumer::builder(je, group)
        .stream(stream)
        .with_state(tally)
        .handle(
            move |event: AppointmentBooked, ctx: Context<Arc<Tally>>| async move {
                if record_latency {
                    ctx.state().record_latency(event.sent_at_ns);
                }
                std::hint::black_box(&event);
                ctx.state().hit();
                Ok::<(), HandlerError>(())
            },
        );
    if let Some(concurrency) = concurrency {
        builder = builder.concurrency(concurrency);
    }
    builder.build().await.expect("jetevents consumer")
}

/// The environment of the jetevents side in scenario 4.
const E2E_JETEVENTS_ENV: &str = "benci";
/// Its stream and the stream's subjects.
const E2E_JETEVENTS_STREAM: &str = "BENCH_E2E";
const E2E_JETEVENTS_STREAM_SUBJECTS: &str = "benci.booking.>";

/// Publishes `events` pipelined (raw, untimed): the backlog both consumers read.
pub async fn fill(raw: &Raw, events: &[AppointmentBooked]) {
    let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::new();
    for event in events {
        if in_flight.len() >= 1024 {
            if let Some(ack) = in_flight.pop_front() {
                ack.await.expect("fill ack");
            }
        }
        let (subject, headers, payload) = raw_message(event);
        let message = PublishMessage::build().payload(payload).headers(headers);
        in_flight.push_back(
            raw.js
                .send_publish(subject, message)
                .await
                .expect("fill send"),
        );
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await.expect("fill ack");
    }
}

/// Waits until the durable `name` has acked everything up to `sequence`.
async fn wait_acked(raw: &Raw, name: &str, sequence: u64) -> bool {
    let stream = raw.js.get_stream(STREAM).await.expect("stream");
    wait_until(Duration::from_secs(30), || {
        let stream = stream.clone();
        async move {
            match stream.consumer_info(name).await {
                Ok(info) => info.ack_floor.stream_sequence >= sequence,
                Err(_) => false,
            }
        }
    })
    .await
}

/// Waits for the handler to have seen `count` events; a consumer that died
/// or stalled fails the run instead of hanging it.
pub async fn reached(tally: &Tally, count: usize, side: Side) {
    let limit = Duration::from_secs(60 + count as u64 / 1_000);
    if tokio::time::timeout(limit, tally.reached()).await.is_err() {
        panic!(
            "{}: handled {} of {count} events in {limit:?}",
            side.name(),
            tally.handled()
        );
    }
}

/// Consumes the backlog as durable `name`, one instance per client of
/// `side` (every instance a separate consumer on its own connection), until
/// the handlers have seen `tally`'s target. Time from starting the
/// consumers (built before) until then.
pub async fn consume_as_group(
    side: Side,
    je: &[Client],
    raw: &[Raw],
    name: &str,
    filters: &[String],
    tally: &Arc<Tally>,
    concurrency: Option<usize>,
) -> Duration {
    let count = tally.target.load(Ordering::Acquire);
    match side {
        Side::Jetevents => {
            let mut consumers = Vec::new();
            for client in je {
                consumers.push(
                    jetevents_consumer(client, name, tally.clone(), false, concurrency).await,
                );
            }
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let start = Instant::now();
            let running: Vec<_> = consumers
                .into_iter()
                .map(|consumer| {
                    let mut stopped = stopped.clone();
                    tokio::spawn(consumer.run_until(async move {
                        let _ = stopped.wait_for(|stopped| *stopped).await;
                    }))
                })
                .collect();
            reached(tally, count, side).await;
            let elapsed = start.elapsed();
            let _ = stop.send(true);
            for instance in running {
                instance.await.expect("join").expect("consumer run");
            }
            elapsed
        }
        Side::Raw => consume_raw_as_group(raw, name, filters, tally, raw_decode).await,
    }
}

/// How the raw side decodes a message: binary mode's `ce-*` headers
/// ([`raw_decode`]) or, in scenario 11, the structured JSON format.
pub type RawDecode = fn(Option<&async_nats::HeaderMap>, &[u8]) -> RawDecoded;

/// [`consume_as_group`]'s raw side, decoding each message with `decode`.
pub async fn consume_raw_as_group(
    raw: &[Raw],
    name: &str,
    filters: &[String],
    tally: &Arc<Tally>,
    decode: RawDecode,
) -> Duration {
    let count = tally.target.load(Ordering::Acquire);
    let mut consumers = Vec::new();
    for connection in raw {
        consumers.push(raw_consumer(connection, name, filters.to_vec()).await);
    }
    let start = Instant::now();
    let running: Vec<_> = consumers
        .into_iter()
        .map(|consumer| tokio::spawn(raw_consume_loop(consumer, tally.clone(), false, decode)))
        .collect();
    reached(tally, count, Side::Raw).await;
    let elapsed = start.elapsed();
    for instance in running {
        instance.abort();
    }
    elapsed
}

/// Scenario 3: a backlog of `events` consumed with typed decode, a no-op
/// handler and ack. Time from starting the consumer until the handler has
/// seen every event.
pub async fn throughput(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let count = settings.events;
    fill_backlog(raw, count).await;
    let (rates, cpu) = rounds_of_group(
        settings,
        std::slice::from_ref(je),
        std::slice::from_ref(raw),
        "3",
    )
    .await;
    let mut scenario = Scenario::new(
        "3",
        format!(
            "consume {count} events: typed decode, no-op handler, ack (jetevents concurrency {})",
            settings
                .concurrency
                .map_or_else(|| "default".to_owned(), |c| c.to_string())
        ),
    );
    scenario.push(Metric::throughput("events/s", &rates[0], &rates[1], 0.95));
    scenario.push(Metric::cpu(&cpu[0], &cpu[1]));
    scenario
}

/// A new benchmark stream holding `count` events.
pub async fn fill_backlog(raw: &Raw, count: usize) {
    recreate_stream(&raw.js).await;
    let fill_start = Instant::now();
    fill(raw, &common::events(0, count)).await;
    eprintln!(
        "  backlog of {count} events published in {:.1}s",
        fill_start.elapsed().as_secs_f64()
    );
}

/// Rates and client CPU per event, per side: every round, each side
/// consumes the whole backlog (`settings.events`) as a new group of one
/// instance per client it is given ([`consume_as_group`]).
pub async fn rounds_of_group(
    settings: &Settings,
    je: &[Client],
    raw: &[Raw],
    label: &str,
) -> ([Vec<f64>; 2], [Vec<f64>; 2]) {
    let count = settings.events;
    let filters = filters(&je[0]);
    let mut rates = [Vec::new(), Vec::new()];
    let mut cpu = [Vec::new(), Vec::new()];
    for round in 0..settings.rounds {
        for side in order(round) {
            let name = format!("bench-{}-{}-{}", side.name(), je.len(), round + 1);
            let cpu_start = common::process_cpu();
            let tally = Tally::new(count);
            let elapsed =
                consume_as_group(side, je, raw, &name, &filters, &tally, settings.concurrency)
                    .await;
            let slot = if side == Side::Jetevents { 0 } else { 1 };
            cpu[slot].push(common::cpu_us_per_event(cpu_start, count));
            assert_eq!(
                tally.handled(),
                count,
                "{} handled more than sent",
                side.name()
            );
            assert!(
                wait_acked(&raw[0], &name, count as u64).await,
                "{}: not every event was acked",
                side.name()
            );
            rates[slot].push(count as f64 / elapsed.as_secs_f64());
            eprintln!(
                "  [{label}] round {} {:<9} {:>9.0} events/s",
                round + 1,
                side.name(),
                rates[slot].last().copied().unwrap_or_default()
            );
            let stream = raw[0].js.get_stream(STREAM).await.expect("stream");
            let _ = stream.delete_consumer(&name).await;
        }
    }
    (rates, cpu)
}

/// Scenario 4: events published at a fixed rate (awaited one at a time) by
/// the side's own publisher, latency from just before the publish call to
/// the handler.
///
/// Both sides' consumers run through the whole round and the publishing
/// alternates between the sides every `JE_BENCH_E2E_CHUNK` (250) events,
/// as in scenario 2: latency at this rate moves with whatever else the
/// machine does, and both sides then see the same conditions. The jetevents
/// side publishes under environment `benci` (the same length as `bench`)
/// to a stream of its own, so each consumer is alone on its stream as it
/// would be with one side at a time.
pub async fn end_to_end(settings: &Settings, je: &Client, raw: &Raw) -> Scenario {
    let count = settings.e2e_events;
    let period = Duration::from_secs_f64(1.0 / settings.e2e_rate.max(1) as f64);
    let chunk = crate::env("JE_BENCH_E2E_CHUNK", 250usize).max(1);
    // The raw side's subjects are the ones of the usual client.
    let raw_filters = filters(je);
    let raw_side_publisher = je.publisher();
    let url = je.config().servers.first().cloned().unwrap_or_default();
    let je = common::jetevents_client_in(&url, E2E_JETEVENTS_ENV).await;
    let publisher = je.publisher();
    let mut latencies: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    // Diagnostic: one publisher for both sides, so the consumers are
    // compared alone.
    let publishing_side = match std::env::var("JE_BENCH_E2E_PUBLISHER").as_deref() {
        Ok("raw") => Some(Side::Raw),
        Ok("jetevents") => Some(Side::Jetevents),
        _ => None,
    };
    for round in 0..settings.rounds {
        recreate_stream(&raw.js).await;
        common::recreate_stream_named(&raw.js, E2E_JETEVENTS_STREAM, E2E_JETEVENTS_STREAM_SUBJECTS)
            .await;
        let tallies = [Tally::new(count), Tally::new(count)];
        let names = [
            format!("bench-e2e-jetevents-{}", round + 1),
            format!("bench-e2e-raw-{}", round + 1),
        ];
        // Start both consumers and wait until their pulls wait at the
        // server, so the first events do not measure start-up.
        let stop = Arc::new(Notify::new());
        let jetevents_running = {
            let consumer = jetevents_consumer_on(
                &je,
                E2E_JETEVENTS_STREAM,
                &names[0],
                tallies[0].clone(),
                true,
                settings.concurrency,
            )
            .await;
            let stop = stop.clone();
            tokio::spawn(async move {
                consumer
                    .run_until(async move { stop.notified().await })
                    .await
                    .expect("consumer run");
            })
        };
        let raw_consumer = raw_consumer(raw, &names[1], raw_filters.clone()).await;
        let raw_running = tokio::spawn(raw_consume_loop(
            raw_consumer,
            tallies[1].clone(),
            true,
            raw_decode,
        ));
        for (stream, name) in [E2E_JETEVENTS_STREAM, STREAM].iter().zip(&names) {
            let stream = raw.js.get_stream(*stream).await.expect("stream");
            let ready = wait_until(Duration::from_secs(10), || {
                let stream = stream.clone();
                let name = name.clone();
                async move {
                    matches!(stream.consumer_info(&name).await, Ok(info) if info.num_waiting > 0)
                }
            })
            .await;
            assert!(ready, "{name} never pulled");
        }

        let mut events = [common::events(0, count), common::events(0, count)];
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for (index, start) in (0..count).step_by(chunk).enumerate() {
            for side in order(round + index) {
                let slot = if side == Side::Jetevents { 0 } else { 1 };
                for event in &mut events[slot][start..(start + chunk).min(count)] {
                    ticks.tick().await;
                    event.sent_at_ns = now_ns();
                    match (side, publishing_side) {
                        (Side::Jetevents, None | Some(Side::Jetevents)) => {
                            publisher.publish(&*event).await.expect("publish");
                        }
                        (Side::Raw, None | Some(Side::Raw)) => {
                            common::raw_publish(raw, raw_message(event)).await;
                        }
                        (Side::Jetevents, Some(Side::Raw)) => {
                            let (subject, headers, payload) = raw_message(event);
                            let subject = subject.replacen(common::ENV, E2E_JETEVENTS_ENV, 1);
                            common::raw_publish(raw, (subject, headers, payload)).await;
                        }
                        (Side::Raw, Some(Side::Jetevents)) => {
                            raw_side_publisher.publish(&*event).await.expect("publish");
                        }
                    }
                }
            }
        }
        // `JE_BENCH_SIDES` may leave one side out: its tally never fills.
        let published = order(round);
        for (slot, side) in [Side::Jetevents, Side::Raw].into_iter().enumerate() {
            if !published.contains(&side) {
                continue;
            }
            let done = tokio::time::timeout(Duration::from_secs(30), tallies[slot].reached()).await;
            assert!(done.is_ok(), "{}: not every event was handled", side.name());
        }
        stop.notify_one();
        jetevents_running.await.expect("join");
        raw_running.abort();
        for (slot, side) in [Side::Jetevents, Side::Raw].into_iter().enumerate() {
            if !published.contains(&side) {
                continue;
            }
            let samples: Vec<Duration> = tallies[slot]
                .latencies_ns
                .lock()
                .unwrap()
                .iter()
                .map(|ns| Duration::from_nanos(*ns))
                .collect();
            let mut sorted = samples.clone();
            sorted.sort();
            eprintln!(
                "  [4] round {} {:<9} p50 {:>7.1} us  p99 {:>7.1} us",
                round + 1,
                side.name(),
                percentile(&sorted, 50.0).as_secs_f64() * 1e6,
                percentile(&sorted, 99.0).as_secs_f64() * 1e6
            );
            latencies[slot].extend(samples);
        }
    }
    for samples in &mut latencies {
        samples.sort();
    }
    let mut scenario = Scenario::new(
        "4",
        format!(
            "end-to-end latency publish -> handler, {count} events per side at {}/s x {} rounds, sides alternating every {chunk}",
            settings.e2e_rate, settings.rounds
        ),
    );
    scenario.push(Metric::latency(
        "p50",
        percentile(&latencies[0], 50.0),
        percentile(&latencies[1], 50.0),
        1.10,
    ));
    scenario.push(Metric::latency(
        "p99",
        percentile(&latencies[0], 99.0),
        percentile(&latencies[1], 99.0),
        1.10,
    ));
    scenario.notes.push(
        "client CPU: both sides run at once in this process, so it is not measured per side \
         (scenarios 1-3 measure it)"
            .to_owned(),
    );
    scenario
}
