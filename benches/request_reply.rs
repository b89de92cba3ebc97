//! Request-reply latency: a jetevents endpoint called with `Client::call`
//! against a raw async-nats queue subscriber answered with `request`, same
//! server, same payload, sequential calls, alternating rounds.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench request_reply
//! ```
//!
//! `JE_BENCH_RR_CALLS` (default 2000) calls per round, `JE_BENCH_RR_ROUNDS`
//! (default 5) rounds per side. Prints p50 and p99 of each side and the
//! ratio jetevents/raw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::service::{Context, EndpointError};
use jetevents_testcontainers::{Backend, NatsServer};
use serde::{Deserialize, Serialize};

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

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let calls = env("JE_BENCH_RR_CALLS", 2000);
    let rounds = env("JE_BENCH_RR_ROUNDS", 5);
    let server = NatsServer::builder()
        .backend(Backend::Binary)
        .start()
        .await
        .expect("start nats-server (binary backend)");
    let client = Client::connect(
        Config::default()
            .with_servers([server.url()])
            .with_env("bench")
            .with_source("/bench"),
    )
    .await
    .unwrap();
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
    let raw = async_nats::connect(server.url()).await.unwrap();
    let mut raw_requests = raw
        .queue_subscribe("bench.raw.ping", "q".into())
        .await
        .unwrap();
    let responder = raw.clone();
    let raw_server = tokio::spawn(async move {
        while let Some(request) = raw_requests.next().await {
            let Some(reply) = request.reply else { continue };
            let pong: Pong = serde_json::from_slice(&request.payload).unwrap();
            responder
                .publish(reply, serde_json::to_vec(&pong).unwrap().into())
                .await
                .unwrap();
        }
    });

    let mut jetevents_latencies = Vec::with_capacity(calls * rounds);
    let mut raw_latencies = Vec::with_capacity(calls * rounds);
    for round in 0..rounds {
        for side in [round % 2, (round + 1) % 2] {
            for _ in 0..calls {
                let started = Instant::now();
                if side == 0 {
                    let pong: Pong = client.call(&ping).await.unwrap();
                    std::hint::black_box(pong);
                    jetevents_latencies.push(started.elapsed());
                } else {
                    let reply = raw
                        .request("bench.raw.ping", raw_payload.clone())
                        .await
                        .unwrap();
                    let pong: Pong = serde_json::from_slice(&reply.payload).unwrap();
                    std::hint::black_box(pong);
                    raw_latencies.push(started.elapsed());
                }
            }
        }
    }
    running.stop().await;
    raw_server.abort();

    jetevents_latencies.sort();
    raw_latencies.sort();
    println!("request-reply, {calls} calls x {rounds} rounds, 256-byte payload");
    for (label, fraction) in [("p50", 0.5), ("p99", 0.99)] {
        let ours = percentile(&jetevents_latencies, fraction);
        let theirs = percentile(&raw_latencies, fraction);
        println!(
            "{label}: jetevents {:>8.1} µs  raw {:>8.1} µs  ratio {:.2}",
            ours.as_secs_f64() * 1e6,
            theirs.as_secs_f64() * 1e6,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
}
