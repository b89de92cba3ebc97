//! Event store appends against raw async-nats publishing the same messages
//! with the same expected-sequence headers, and the load time of a large
//! aggregate with and without a snapshot. Same server, alternating rounds.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench eventstore
//! ```
//!
//! - Appends: `JE_BENCH_ES_APPENDS` (default 2000) sequential appends per
//!   round and side, `JE_BENCH_ES_ROUNDS` (default 5) rounds; once with one
//!   event per append (a JetStream publish), once with ten (an atomic batch).
//!   Each append names the aggregate's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence` on the aggregate's filter), as
//!   `EventStore::append_at` does; the raw side sends the same CloudEvents
//!   headers, ids, versions and payloads with async-nats directly.
//! - Load: an aggregate of `JE_BENCH_ES_LOAD_EVENTS` (default 10000) events,
//!   loaded `JE_BENCH_ES_LOADS` (default 10) times from its events alone,
//!   then from a snapshot 100 events before its end.
//!
//! - `JE_BENCH_ES_CASES` (default `1,10,load`): which of them run (for a
//!   profile of one case). Opt-in: `1v` and `10v`, the same appends
//!   through `EventStore::append` with `Expected::Version` (the version of
//!   the store's previous append), as a service appends after loading and
//!   deciding.
//!
//! Prints appends per second of each side, the ratio jetevents/raw, the
//! client CPU per append of each side (process CPU time, which barely moves
//! when other processes compete for the CPUs), and the median load times.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use jetevents::client::Client;
use jetevents::eventstore::{
    Aggregate, EventStore, Expected, Position, SnapshotPolicy, Snapshots, StoreStream,
    VERSION_HEADER,
};
use serde::{Deserialize, Serialize};

#[path = "compare/common.rs"]
#[allow(dead_code)]
mod common;
mod support;
use support::env;

const ENV: &str = "bench";
const SOURCE: &str = "/bench";

#[derive(Default, Serialize, Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Clone, Serialize, Deserialize)]
enum CounterEvent {
    #[serde(rename = "added.v1")]
    Added { n: u64 },
}

impl Aggregate for Counter {
    const KIND: &'static str = "bench.counter";
    type Event = CounterEvent;
    type Command = ();
    type Error = std::convert::Infallible;

    fn apply(&mut self, event: &CounterEvent) {
        let CounterEvent::Added { n } = event;
        self.total += n;
    }

    fn handle(&self, _: &()) -> Result<Vec<CounterEvent>, Self::Error> {
        Ok(vec![])
    }
}

fn added(count: usize) -> Vec<CounterEvent> {
    (0..count as u64)
        .map(|n| CounterEvent::Added { n })
        .collect()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// How the jetevents side names where it appends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// `append_at` the previous append's position.
    Position,
    /// `append` with `Expected::Version` of the previous append.
    Version,
}

/// `appends` appends of `events` events each to a new aggregate through
/// the event store, each after the last.
async fn jetevents_appends(
    store: &EventStore,
    key: &str,
    appends: usize,
    events: usize,
    guard: Guard,
) {
    let batch = added(events);
    let mut position = Position::default();
    for _ in 0..appends {
        let appended = match guard {
            Guard::Position => store.append_at::<Counter>(key, &batch, position).await,
            Guard::Version => {
                store
                    .append::<Counter>(key, batch.clone(), Expected::Version(position.version))
                    .await
            }
        }
        .unwrap();
        position = Position {
            version: appended.version,
            sequence: appended.sequence,
        };
    }
}

/// The messages the event store sends for `events` events of `key` after
/// `version`, built by hand: CloudEvents binary headers, a fresh id, the
/// version, and on the first the expected sequence on the aggregate.
fn raw_messages(
    key: &str,
    version: u64,
    events: usize,
    last_sequence: u64,
) -> Vec<(String, HeaderMap, Bytes)> {
    let filter = format!("{ENV}.bench.counter.*.*.{key}");
    (0..events)
        .map(|index| {
            let id = uuid::Uuid::now_v7().to_string();
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MESSAGE_ID, id.as_str());
            headers.insert("ce-specversion", "1.0");
            headers.insert("ce-id", id.as_str());
            headers.insert("ce-source", SOURCE);
            headers.insert("ce-type", "bench.counter.added.v1");
            headers.insert("ce-time", chrono::Utc::now().to_rfc3339().as_str());
            headers.insert("ce-datacontenttype", "application/json");
            headers.insert("ce-partitionkey", key);
            headers.insert(
                VERSION_HEADER,
                (version + index as u64 + 1).to_string().as_str(),
            );
            if index == 0 {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    last_sequence.to_string().as_str(),
                );
                headers.insert(
                    "Nats-Expected-Last-Subject-Sequence-Subject",
                    filter.as_str(),
                );
            }
            let payload = serde_json::to_vec(&serde_json::json!({ "n": index })).unwrap();
            let subject = format!("{ENV}.bench.counter.added.v1.{key}");
            (subject, headers, Bytes::from(payload))
        })
        .collect()
}

#[derive(Deserialize)]
struct Ack {
    seq: u64,
}

/// The same appends with async-nats: a JetStream publish for one event, the
/// atomic batch protocol for more.
async fn raw_appends(
    nats: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    key: &str,
    appends: usize,
    events: usize,
) {
    let mut last_sequence = 0;
    for append in 0..appends {
        let version = (append * events) as u64;
        let mut messages = raw_messages(key, version, events, last_sequence);
        if events == 1 {
            let (subject, headers, payload) = messages.pop().unwrap();
            let ack = jetstream
                .publish_with_headers(subject, headers, payload)
                .await
                .unwrap()
                .await
                .unwrap();
            last_sequence = ack.sequence;
            continue;
        }
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        for (index, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
            headers.insert(NATS_BATCH_ID, batch_id.as_str());
            headers.insert(NATS_BATCH_SEQUENCE, (index + 1).to_string().as_str());
            let last = index + 1 == events;
            if last {
                headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
            }
            if index == 0 || last {
                let reply = nats
                    .request_with_headers(subject, headers, payload)
                    .await
                    .unwrap();
                if last {
                    let ack: Ack = serde_json::from_slice(&reply.payload)
                        .unwrap_or_else(|_| panic!("{:?}", reply.payload));
                    last_sequence = ack.seq;
                }
            } else {
                nats.publish_with_headers(subject, headers, payload)
                    .await
                    .unwrap();
            }
        }
    }
}

async fn compare_appends(
    store: &EventStore,
    nats: &async_nats::Client,
    jetstream: &async_nats::jetstream::Context,
    events: usize,
    guard: Guard,
) {
    let appends = env("JE_BENCH_ES_APPENDS", 2000);
    let rounds = env("JE_BENCH_ES_ROUNDS", 5);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut our_cpu, mut their_cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        for side in [round % 2, (round + 1) % 2] {
            let via = if guard == Guard::Version { "v" } else { "" };
            let key = format!("r{round}-s{side}-e{events}{via}");
            let started = Instant::now();
            let cpu = common::process_cpu();
            if side == 0 {
                jetevents_appends(store, &key, appends, events, guard).await;
                ours.push(started.elapsed());
                our_cpu += common::process_cpu() - cpu;
            } else {
                raw_appends(nats, jetstream, &key, appends, events).await;
                theirs.push(started.elapsed());
                their_cpu += common::process_cpu() - cpu;
            }
        }
    }
    let per_second = |elapsed: Duration| appends as f64 / elapsed.as_secs_f64();
    let (ours, theirs) = (per_second(median(ours)), per_second(median(theirs)));
    let per_append = |cpu: Duration| cpu.as_secs_f64() * 1e6 / (appends * rounds) as f64;
    let via = match guard {
        Guard::Position => "append_at",
        Guard::Version => "Expected::Version",
    };
    println!(
        "{events:>2}-event appends ({via}), {appends} x {rounds} rounds: jetevents {ours:>8.0}/s  \
         raw {theirs:>8.0}/s  ratio {:.2}  client CPU per append: jetevents {:.1} us, \
         raw {:.1} us",
        ours / theirs,
        per_append(our_cpu),
        per_append(their_cpu)
    );
}

async fn load_times(client: &Client, store: &EventStore) {
    let events = env("JE_BENCH_ES_LOAD_EVENTS", 10_000).max(200);
    let loads = env("JE_BENCH_ES_LOADS", 10);
    let key = "large";
    let mut first_sequence = None;
    for chunk in added(events).chunks(1_000) {
        let appended = store
            .append::<Counter>(key, chunk.to_vec(), Expected::Any)
            .await
            .unwrap();
        first_sequence.get_or_insert(appended.first_sequence);
    }
    let time_loads = |store: EventStore| async move {
        let mut times = Vec::with_capacity(loads);
        for _ in 0..loads {
            let started = Instant::now();
            let loaded = store.load::<Counter>(key).await.unwrap();
            times.push(started.elapsed());
            assert_eq!(loaded.version, events as u64);
        }
        median(times)
    };
    let without = time_loads(store.clone()).await;

    let bucket = client
        .jetstream()
        .unwrap()
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "BENCH_SNAPSHOTS".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let snapshots = Snapshots::new(bucket, SnapshotPolicy::Manual);
    let at = events - 100;
    let mut state = Counter::default();
    for event in &added(events)[..at] {
        state.apply(event);
    }
    let sequence = first_sequence.unwrap() + at as u64 - 1;
    // The snapshot records the id of the event it ends on: the message's
    // `Nats-Msg-Id`, which the store sets to the CloudEvents id.
    let event_id = client
        .jetstream()
        .unwrap()
        .get_stream(store.stream())
        .await
        .unwrap()
        .direct_get(sequence)
        .await
        .unwrap()
        .headers
        .get("Nats-Msg-Id")
        .unwrap()
        .as_str()
        .to_owned();
    snapshots
        .save(key, &state, at as u64, sequence, &event_id)
        .await
        .unwrap();
    let with = time_loads(store.clone().with_snapshots(snapshots)).await;
    println!(
        "load of {events} events, median of {loads}: from the events {:>8.1} ms  \
         from a snapshot + 100 {:>8.1} ms",
        without.as_secs_f64() * 1e3,
        with.as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let (server, client) = support::server_and_client_as(ENV, SOURCE).await;
    let store = EventStore::provision(&client, StoreStream::new("BENCH_ES", "bench"))
        .await
        .unwrap();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats.clone());

    let cases = std::env::var("JE_BENCH_ES_CASES").unwrap_or_else(|_| "1,10,load".into());
    let runs = |case: &str| cases.split(',').any(|listed| listed.trim() == case);
    for events in [1, 10] {
        if runs(&events.to_string()) {
            compare_appends(&store, &nats, &jetstream, events, Guard::Position).await;
        }
        if runs(&format!("{events}v")) {
            compare_appends(&store, &nats, &jetstream, events, Guard::Version).await;
        }
    }
    if runs("load") {
        load_times(&client, &store).await;
    }
}
