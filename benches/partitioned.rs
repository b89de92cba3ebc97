//! Ordered partitioned consumption at P = 1, 4 and 16 against the unordered
//! group, on the same backlog: events per second from the first delivery to
//! the last ack, one member (one process), same server.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench partitioned
//! ```
//!
//! `JE_BENCH_PCG_EVENTS` (default 20000) events over `JE_BENCH_PCG_KEYS`
//! (default 1000) keys; `JE_BENCH_PCG_HANDLER_US` (default 0) microseconds
//! of simulated work per event. The unordered group runs with the default
//! concurrency (8); a partition runs one event at a time. Each row also
//! gives the client's CPU per event (the bench process's, server apart),
//! which a busy machine barely moves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The compare bench's helpers: `process_cpu`.
#[allow(dead_code)]
#[path = "compare/common.rs"]
mod common;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::consume::partitioned::{partitioned_stream, PartitionedConfig, PartitionedConsumer};
use jetevents::consume::{Consumer, ConsumerBuilder, Context, HandlerError};
use serde::{Deserialize, Serialize};
use support::{env, Background};

#[derive(Serialize, Deserialize)]
struct Recorded {
    key: String,
    n: usize,
}

impl jetevents::Event for Recorded {
    const TYPE: &'static str = "bench.entry.recorded.v1";
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// A builder whose handler counts events (after the simulated work).
fn counting(
    client: &Client,
    group: &str,
    stream: &str,
    count: &Arc<AtomicUsize>,
    work: Duration,
) -> ConsumerBuilder<Arc<AtomicUsize>> {
    Consumer::builder(client, group)
        .stream(stream)
        .with_state(count.clone())
        .handle(
            move |_: Recorded, ctx: Context<Arc<AtomicUsize>>| async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                ctx.state().fetch_add(1, Ordering::SeqCst);
                Ok::<_, HandlerError>(())
            },
        )
}

/// Fills `stream` with the backlog.
async fn backlog(client: &Client, stream: &str, partitions: u16, events: usize, keys: usize) {
    client
        .ensure_stream(&partitioned_stream(client.subjects(), stream, "bench", partitions).unwrap())
        .await
        .unwrap();
    let all: Vec<Recorded> = (0..events)
        .map(|n| Recorded {
            key: format!("k{}", n % keys),
            n,
        })
        .collect();
    for chunk in all.chunks(1000) {
        for result in client.publisher().publish_many(chunk, 256).await {
            result.unwrap();
        }
    }
}

/// From the first event handled to the last: joining the group and
/// creating the partitions' consumers is not consumption.
async fn wait_for(count: &AtomicUsize, events: usize) -> Duration {
    while count.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    while count.load(Ordering::SeqCst) < events {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// One measured consumption: wall time from the first event handled to
/// the last, and the process's CPU from the start of the consumer(s).
struct Measured {
    elapsed: Duration,
    cpu: Duration,
}

fn report(label: &str, events: usize, measured: &Measured) {
    println!(
        "{label:<20} {events} events  {:>10.2?}  {:>8.0} ev/s  client CPU {:>6.1} µs/event",
        measured.elapsed,
        events as f64 / measured.elapsed.as_secs_f64(),
        measured.cpu.as_secs_f64() * 1e6 / events as f64
    );
}

/// Runs one partitioned member of `group` until `events` are handled.
async fn ordered(
    client: &Client,
    group: &str,
    stream: &str,
    partitions: u16,
    events: usize,
    work: Duration,
) -> Measured {
    let count = Arc::new(AtomicUsize::new(0));
    let cpu = common::process_cpu();
    let builder = counting(client, group, stream, &count, work);
    let member = PartitionedConsumer::build(builder, PartitionedConfig::new(partitions))
        .await
        .unwrap();
    let running = Background::spawn(|stopped| member.run_until(stopped));
    let elapsed = wait_for(&count, events).await;
    let cpu = common::process_cpu() - cpu;
    running.stop().await;
    Measured { elapsed, cpu }
}

#[tokio::main]
async fn main() {
    let events = env("JE_BENCH_PCG_EVENTS", 20_000);
    let keys = env("JE_BENCH_PCG_KEYS", 1000);
    let work = Duration::from_micros(env("JE_BENCH_PCG_HANDLER_US", 0) as u64);
    let (_server, client) = support::server_and_client().await;

    // The unordered group reads the P = 16 stream: the same stored backlog.
    for partitions in [16u16, 1, 4] {
        let stream = format!("PCG{partitions}");
        backlog(&client, &stream, partitions, events, keys).await;
        let measured = ordered(
            &client,
            &format!("ordered{partitions}"),
            &stream,
            partitions,
            events,
            work,
        )
        .await;
        report(&format!("ordered   P={partitions}"), events, &measured);

        if partitions == 16 {
            let count = Arc::new(AtomicUsize::new(0));
            let cpu = common::process_cpu();
            let consumer = counting(&client, "unordered", &stream, &count, work)
                .filter_subject("*.bench.>")
                .build()
                .await
                .unwrap();
            let running = Background::spawn(|stopped| consumer.run_until(stopped));
            let elapsed = wait_for(&count, events).await;
            let cpu = common::process_cpu() - cpu;
            running.stop().await;
            report("unordered (group)", events, &Measured { elapsed, cpu });
        }
        // The next stream captures the same subjects.
        client
            .jetstream()
            .unwrap()
            .delete_stream(&stream)
            .await
            .unwrap();
    }
}
