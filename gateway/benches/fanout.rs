//! Fan-out benchmark: many SSE clients on loopback (default 1,000) reading one
//! stream of events from the `jetevents-gateway` binary (a child process, so
//! its memory is its own) and a real nats-server.
//!
//! Prints the publish-to-client latency p50/p99 over every (event, client)
//! pair, and the gateway's resident memory per connection (RSS after the
//! clients connected minus before, divided by their number).
//!
//! `cargo bench -p jetevents-gateway --bench fanout`; smaller runs with
//! `FANOUT_CLIENTS=50 FANOUT_EVENTS=20`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::stream::Config as StreamConfig;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::event::Event;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Serialize, Deserialize)]
struct Stamped {
    sent_ns: u128,
}
impl Event for Stamped {
    const TYPE: &'static str = "demo.bench.stamped.v1";
}

const MARKER: &[u8] = b"\"sent_ns\":";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// One client: a raw socket reading the SSE response and reporting, for each
/// event, the latency since the publisher stamped it.
async fn sse_client(
    addr: std::net::SocketAddr,
    token: String,
    latencies: mpsc::UnboundedSender<u128>,
) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 8192];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let read = match tcp.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let received = now_ns();
        carry.extend_from_slice(&buffer[..read]);
        let mut consumed = 0;
        while let Some(at) = find(&carry[consumed..], MARKER) {
            let start = consumed + at + MARKER.len();
            let digits = carry[start..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if start + digits >= carry.len() {
                break;
            }
            let sent: u128 = std::str::from_utf8(&carry[start..start + digits])
                .unwrap()
                .parse()
                .unwrap();
            let _ = latencies.send(received.saturating_sub(sent));
            consumed = start + digits;
        }
        let keep = carry.len().saturating_sub(MARKER.len() + 40).max(consumed);
        carry.drain(..keep);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percentile(sorted: &[u128], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_nanos(sorted.get(index).copied().unwrap_or(0) as u64)
}

#[tokio::main]
async fn main() {
    let clients = env_number("FANOUT_CLIENTS", 1000);
    let events = env_number("FANOUT_EVENTS", 200);
    let server = jetevents_testcontainers::NatsServer::start().await.unwrap();
    let client = Client::connect(
        Config::default()
            .with_servers([server.url()])
            .with_env("bench")
            .with_source("/bench"),
    )
    .await
    .unwrap();
    let stream = support::unique("FANOUT");
    let jetstream = client.jetstream().unwrap();
    jetstream
        .create_stream(StreamConfig {
            name: stream.clone(),
            subjects: vec!["bench.demo.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_jetevents-gateway"))
        .env("NATS_URL", server.url())
        .env("JETEVENTS_ENV", "bench")
        .env("GATEWAY_STREAM", &stream)
        .env("GATEWAY_LISTEN", addr.to_string())
        .env(
            "GATEWAY_HS256_SECRET",
            std::str::from_utf8(support::SECRET).unwrap(),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let gateway_pid = gateway.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_before = rss_kib(gateway_pid);

    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel();
    for _ in 0..clients {
        tokio::spawn(sse_client(addr, support::demo_token(), latency_tx.clone()));
    }
    drop(latency_tx);
    // Every client is streaming once a first event reaches all of them.
    let publisher = client.publisher();
    let mut latencies = Vec::with_capacity(clients * events);
    let warmup = Instant::now() + Duration::from_secs(60);
    loop {
        publisher
            .publish(&Stamped { sent_ns: now_ns() })
            .await
            .unwrap();
        let mut got = 0;
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                Some(_) = latency_rx.recv() => got += 1,
                _ = &mut wait => break,
            }
        }
        if got >= clients {
            break;
        }
        assert!(
            Instant::now() < warmup,
            "not every client connected ({got}/{clients})"
        );
    }
    let rss_connected = rss_kib(gateway_pid);

    let started = Instant::now();
    for _ in 0..events {
        publisher
            .publish(&Stamped { sent_ns: now_ns() })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expected = clients * events;
    let collect_until = Instant::now() + Duration::from_secs(60);
    while latencies.len() < expected && Instant::now() < collect_until {
        match tokio::time::timeout(Duration::from_secs(5), latency_rx.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => break,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let per_connection = (rss_connected.saturating_sub(rss_before) as f64) / clients as f64;
    println!("fanout: {clients} SSE clients, {events} events (every 5 ms), {} deliveries of {expected} in {elapsed:?}", latencies.len());
    println!(
        "  publish-to-client latency p50 {:?}  p99 {:?}  max {:?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!("  gateway RSS {rss_before} KiB idle, {rss_connected} KiB connected: {per_connection:.1} KiB per connection");
    let _ = gateway.kill().await;
}
