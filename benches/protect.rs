//! Payload protection overhead: encrypted against plaintext publishing and
//! consuming of 1 KiB and 64 KiB events, same server, same run, alternating
//! rounds; then a claim-check round trip of a large payload through an
//! Object Store bucket.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench protect --features encryption
//! ```
//!
//! `JE_BENCH_PROTECT_EVENTS` (default 2000) events per round,
//! `JE_BENCH_PROTECT_ROUNDS` (default 3) rounds per side,
//! `JE_BENCH_PROTECT_LARGE_MIB` (default 16) the claim-checked payload.
//! Prints the median events/s of each side and the ratio encrypted/plain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetevents::claim_check::ClaimCheck;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::consume::{Consumer, Context};
use jetevents::encryption::{Encryption, Keyring};
use jetevents::provision::StreamSpec;
use jetevents::publish::Publisher;
use jetevents_testcontainers::{Backend, NatsServer};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Serialize, Deserialize)]
struct Blob {
    n: usize,
    body: String,
}

impl jetevents::Event for Blob {
    const TYPE: &'static str = "bench.blob.stored.v1";
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn keyring() -> Keyring {
    Keyring::new().with_key("bench", [7; 32])
}

/// A client in its own environment with its own stream of `bench` events.
async fn world(url: &str, env_name: &str) -> Client {
    let client = Client::connect(
        Config::default()
            .with_servers([url])
            .with_env(env_name)
            .with_source("/bench"),
    )
    .await
    .unwrap();
    let spec = StreamSpec::for_domain(client.subjects(), env_name.to_uppercase(), "bench").unwrap();
    client.ensure_stream(&spec).await.unwrap();
    client
}

/// Seconds to consume `count` events of `client`'s stream, decrypting
/// when `decryption` is set.
async fn consume(client: &Client, count: usize, decryption: Option<Encryption>) -> f64 {
    let handled = Arc::new((AtomicUsize::new(0), Notify::new()));
    let mut builder =
        Consumer::builder(client, "bench").stream(client.subjects().env().to_uppercase());
    if let Some(decryption) = decryption {
        builder = builder.decrypt_with(decryption);
    }
    let consumer = builder
        .with_state(Arc::clone(&handled))
        .handle(
            move |blob: Blob, ctx: Context<Arc<(AtomicUsize, Notify)>>| async move {
                std::hint::black_box(blob.body.len());
                let (seen, done) = &**ctx.state();
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    done.notify_one();
                }
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let done = Arc::clone(&handled);
    consumer
        .run_until(async move { done.1.notified().await })
        .await
        .unwrap();
    started.elapsed().as_secs_f64()
}

/// Seconds to publish `events` pipelined.
async fn publish(publisher: &Publisher, events: &[Blob]) -> f64 {
    let started = Instant::now();
    let results = publisher.publish_many(events, 256).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(results.iter().all(Result::is_ok));
    elapsed
}

#[tokio::main]
async fn main() {
    let count = env("JE_BENCH_PROTECT_EVENTS", 2000);
    let rounds = env("JE_BENCH_PROTECT_ROUNDS", 3);
    let large_mib = env("JE_BENCH_PROTECT_LARGE_MIB", 16);
    let server = NatsServer::builder()
        .backend(Backend::Binary)
        .start()
        .await
        .expect("start nats-server (binary backend)");
    let url = server.url();

    println!("payload protection, {count} events x {rounds} rounds per side (events/s, median)");
    for size in [1024, 64 * 1024] {
        let events: Vec<Blob> = (0..count)
            .map(|n| Blob {
                n,
                body: "x".repeat(size),
            })
            .collect();
        // [plain, encrypted] x [publish, consume] events/s.
        let mut rates: [[Vec<f64>; 2]; 2] = Default::default();
        for round in 0..rounds {
            for encrypted in [round % 2 == 1, round % 2 == 0] {
                let side = usize::from(encrypted);
                let client = world(&url, &format!("p{size}r{round}s{side}")).await;
                let publisher = match encrypted {
                    true => client
                        .publisher()
                        .with_encryption(Encryption::new(keyring())),
                    false => client.publisher(),
                };
                let published = publish(&publisher, &events).await;
                let decryption = encrypted.then(|| Encryption::new(keyring()));
                let consumed = consume(&client, count, decryption).await;
                rates[side][0].push(count as f64 / published);
                rates[side][1].push(count as f64 / consumed);
                client.close().await;
            }
        }
        for (step, label) in ["publish", "consume"].iter().enumerate() {
            let plain = median(rates[0][step].clone());
            let encrypted = median(rates[1][step].clone());
            println!(
                "{:>3} KiB {label}: plain {plain:>9.0}/s  encrypted {encrypted:>9.0}/s  ratio {:.2}",
                size / 1024,
                encrypted / plain
            );
        }
    }

    let large = [Blob {
        n: 0,
        body: "y".repeat(large_mib * 1024 * 1024),
    }];
    let mut round_trips = Vec::new();
    for round in 0..rounds {
        let client = world(&url, &format!("claim{round}")).await;
        let claim_check = ClaimCheck::open(&client, &format!("BENCH_DOCS_{round}"))
            .await
            .unwrap();
        let publisher = client.publisher().with_claim_check(claim_check);
        let published = publish(&publisher, &large).await;
        let consumed = consume(&client, 1, None).await;
        round_trips.push(published + consumed);
        client.close().await;
    }
    let seconds = median(round_trips);
    println!(
        "claim check {large_mib} MiB round trip (publish + consume): {:.0} ms, {:.0} MiB/s",
        Duration::from_secs_f64(seconds).as_secs_f64() * 1e3,
        large_mib as f64 / seconds
    );
}
