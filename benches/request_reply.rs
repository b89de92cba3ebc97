//! Request-reply latency: a jetevents endpoint called with `Client::call`
//! against raw async-nats `request`s answered by a queue subscriber, same
//! server, same payload, same runtime, sequential calls, rounds rotating the
//! order of the sides.
//!
//! Two raw sides: `raw` sends the JSON payload alone (the target's
//! baseline); `raw+headers` also sends the headers jetevents puts on the
//! wire both ways (the CloudEvents attributes and the caller's budget),
//! cloned from ones built once, so it pays for carrying them but not for
//! building or reading them.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench request_reply
//! ```
//!
//! `JE_BENCH_RR_CALLS` (default 2000) calls per round, `JE_BENCH_RR_ROUNDS`
//! (default 6) rounds per side. Prints p50 and p99 of each side, the ratios
//! jetevents/raw, and the CPU this process spends per call (caller and
//! responder both live here), which other load on the machine barely moves.
//! The CloudEvents work in process is the CPU jetevents spends beyond
//! raw+headers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use jetevents::codec::{self, Encoding};
use jetevents::envelope::Envelope;
use jetevents::service::{Context, EndpointError, REQUEST_TIMEOUT_HEADER};
use serde::{Deserialize, Serialize};

mod support;
use support::env;

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Ping {
    blob: String,
}

impl jetevents::Event for Ping {
    const TYPE: &'static str = "bench.ping.sent.v1";
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Pong {
    blob: String,
}

impl jetevents::Event for Pong {
    const TYPE: &'static str = "bench.pong.sent.v1";
}

const SOURCE: &str = "/bench";
const RAW_SUBJECT: &str = "bench.raw.ping";
const RAW_HEADERS_SUBJECT: &str = "bench.raw-headers.ping";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Jetevents,
    Raw,
    RawHeaders,
}

impl Side {
    const ALL: [Side; 3] = [Side::Jetevents, Side::Raw, Side::RawHeaders];

    fn index(self) -> usize {
        match self {
            Side::Jetevents => 0,
            Side::Raw => 1,
            Side::RawHeaders => 2,
        }
    }
}

/// What one side measured: every call's latency, and CPU per call of each
/// round.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    cpu_per_call: Vec<Duration>,
}

/// The sides `JE_BENCH_RR_SIDES` names (`jetevents,raw,raw+headers`; all
/// by default), to profile one alone.
fn sides() -> Vec<Side> {
    let names = std::env::var("JE_BENCH_RR_SIDES").unwrap_or_default();
    let named: Vec<Side> = names
        .split(',')
        .filter_map(|name| match name.trim() {
            "jetevents" => Some(Side::Jetevents),
            "raw" => Some(Side::Raw),
            "raw+headers" => Some(Side::RawHeaders),
            _ => None,
        })
        .collect();
    if named.is_empty() {
        Side::ALL.to_vec()
    } else {
        named
    }
}

/// Zero for a side not run.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

/// CPU time every thread of this process has run so far, from the
/// scheduler's per-thread accounting (nanoseconds, unlike the 10 ms ticks of
/// `/proc/self/stat`). Threads that exited are not counted: the runtime's
/// workers live for the whole run.
fn process_cpu() -> Duration {
    let threads = std::fs::read_dir("/proc/self/task").unwrap();
    let nanos = threads
        .filter_map(|thread| {
            let stat = std::fs::read_to_string(thread.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(nanos)
}

/// The headers a jetevents request and its response carry, built once: the
/// attributes a call sends (no `time`, no `datacontenttype`), the budget,
/// the response's lineage.
fn jetevents_headers(ping: &Ping, pong: &Pong) -> (HeaderMap, HeaderMap) {
    let on_the_wire = |mut envelope: Envelope| {
        envelope.time = None;
        envelope.data_content_type = None;
        codec::encode(&envelope, Encoding::Binary).unwrap().0
    };
    let request = Envelope::from_event(SOURCE, ping).unwrap();
    let request_id = request.id.clone();
    let mut request_headers = on_the_wire(request);
    request_headers.insert(REQUEST_TIMEOUT_HEADER, "5000");
    let mut response = Envelope::from_event(SOURCE, pong).unwrap();
    response.set_correlation_id(request_id.clone());
    response.set_causation_id(request_id);
    (request_headers, on_the_wire(response))
}

/// Answers every request on `subject` with the JSON of its `Pong`, with
/// `headers` when there are any.
async fn raw_responder(
    raw: &async_nats::Client,
    subject: &'static str,
    headers: HeaderMap,
) -> tokio::task::JoinHandle<()> {
    let mut requests = raw.queue_subscribe(subject, "q".into()).await.unwrap();
    let responder = raw.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else { continue };
            let pong: Pong = serde_json::from_slice(&request.payload).unwrap();
            let payload = serde_json::to_vec(&pong).unwrap().into();
            if headers.is_empty() {
                responder.publish(reply, payload).await.unwrap();
            } else {
                responder
                    .publish_with_headers(reply, headers.clone(), payload)
                    .await
                    .unwrap();
            }
        }
    })
}

#[tokio::main]
async fn main() {
    let calls = env("JE_BENCH_RR_CALLS", 2000);
    let rounds = env("JE_BENCH_RR_ROUNDS", 6);
    let sides = sides();
    let (server, client) = support::server_and_client_as("bench", SOURCE).await;
    let running = client
        .service("bench", "1.0.0")
        .endpoint(|ping: Ping, _: Context| async move {
            Ok::<_, EndpointError>(Pong { blob: ping.blob })
        })
        .start()
        .await
        .unwrap();

    let ping = Ping {
        blob: "x".repeat(256),
    };
    let raw_payload: bytes::Bytes = serde_json::to_vec(&ping).unwrap().into();
    let (request_headers, response_headers) = jetevents_headers(
        &ping,
        &Pong {
            blob: ping.blob.clone(),
        },
    );
    let raw = async_nats::connect(server.url()).await.unwrap();
    let responders = [
        raw_responder(&raw, RAW_SUBJECT, HeaderMap::new()).await,
        raw_responder(&raw, RAW_HEADERS_SUBJECT, response_headers).await,
    ];

    let mut samples: [Samples; 3] = Default::default();
    for round in 0..rounds {
        let mut order = Side::ALL;
        order.rotate_left(round % Side::ALL.len());
        for side in order.into_iter().filter(|side| sides.contains(side)) {
            let cpu_started = process_cpu();
            for _ in 0..calls {
                let started = Instant::now();
                let pong: Pong = match side {
                    Side::Jetevents => client.call(&ping).await.unwrap(),
                    Side::Raw => {
                        let reply = raw.request(RAW_SUBJECT, raw_payload.clone()).await.unwrap();
                        serde_json::from_slice(&reply.payload).unwrap()
                    }
                    Side::RawHeaders => {
                        let reply = raw
                            .request_with_headers(
                                RAW_HEADERS_SUBJECT,
                                request_headers.clone(),
                                raw_payload.clone(),
                            )
                            .await
                            .unwrap();
                        serde_json::from_slice(&reply.payload).unwrap()
                    }
                };
                std::hint::black_box(pong);
                samples[side.index()].latencies.push(started.elapsed());
            }
            let cpu = process_cpu() - cpu_started;
            samples[side.index()]
                .cpu_per_call
                .push(cpu / u32::try_from(calls).unwrap());
        }
    }
    running.stop().await;
    for responder in responders {
        responder.abort();
    }

    for side in &mut samples {
        side.latencies.sort();
        side.cpu_per_call.sort();
    }
    let [ours, raw, raw_headers] = &samples;
    println!("request-reply, {calls} calls x {rounds} rounds, 256-byte payload");
    let micros = |duration: Duration| duration.as_secs_f64() * 1e6;
    let ratio = |ours: Duration, theirs: Duration| ours.as_secs_f64() / theirs.as_secs_f64();
    for (label, fraction) in [("p50", 0.5), ("p99", 0.99)] {
        let [ours, raw, raw_headers] =
            [ours, raw, raw_headers].map(|side| percentile(&side.latencies, fraction));
        println!(
            "{label}: jetevents {:>7.1} µs  raw {:>7.1} µs  raw+headers {:>7.1} µs  \
             ratio {:.2} (vs raw+headers {:.2})",
            micros(ours),
            micros(raw),
            micros(raw_headers),
            ratio(ours, raw),
            ratio(ours, raw_headers)
        );
    }
    let [ours, raw, raw_headers] =
        [ours, raw, raw_headers].map(|side| percentile(&side.cpu_per_call, 0.5));
    println!(
        "CPU per call (median of rounds): jetevents {:>5.1} µs  raw {:>5.1} µs  \
         raw+headers {:>5.1} µs",
        micros(ours),
        micros(raw),
        micros(raw_headers)
    );
}
