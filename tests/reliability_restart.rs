//! A graceful server restart and lame-duck mode while publishing and
//! consuming: the client rides through, nothing acked is lost.
//!
//! Each test owns its server (they stop it). Scale the event count with
//! `JETEVENTS_FAULT_SCALE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents::client::Client;
use jetevents_testcontainers::NatsServer;

mod checker;
mod support;
use checker::{
    chaos_stream, consumer, drain, eventually, op, read_back, scaled, Bounds, Checker, Running,
};

const CONCURRENCY: usize = 8;
/// Small, so the duplicates a restart can explain are few.
const PREFETCH: usize = 16;

struct Scenario {
    client: Client,
    checker: Arc<Checker>,
    done: Arc<AtomicUsize>,
    count: usize,
    publishing: tokio::task::JoinHandle<()>,
    running: Running,
    /// Opens the second half of the publishing.
    gate: tokio::sync::watch::Sender<bool>,
}

impl Scenario {
    /// Lets the publisher go on (it waits at half of its events), so its
    /// next publishes meet the fault.
    fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

async fn start(server: &NatsServer, name: &str) -> Scenario {
    let client = support::connect(&server.url(), "dev", |config| {
        config.ack_timeout = Duration::from_millis(500);
        // Outlasts a server that is down for a while (lame duck takes ~30 s).
        config.publish_retry.max_attempts = 100;
        config.publish_retry.max_delay = Duration::from_millis(500);
    })
    .await;
    chaos_stream(&client, "CHAOS", 1).await;
    let checker = Checker::new(name);
    let running = Running::start(
        consumer(&client, "restarts", "CHAOS", &checker, Duration::ZERO)
            .ack_wait(Duration::from_secs(2))
            .pull_expiry(Duration::from_millis(500))
            .concurrency(CONCURRENCY)
            .prefetch(PREFETCH)
            .build()
            .await
            .unwrap(),
    );
    let count = scaled(300);
    let done = Arc::new(AtomicUsize::new(0));
    let (gate, mut gate_open) = tokio::sync::watch::channel(false);
    let publishing = tokio::spawn({
        let publisher = client.publisher();
        let checker = checker.clone();
        let done = done.clone();
        let run = name.to_owned();
        async move {
            for n in 0..count {
                if n == count / 2 {
                    gate_open.wait_for(|open| *open).await.unwrap();
                }
                let event = op(&run, n, 100);
                let result = publisher.publish(&event).await;
                checker.record(&event.op, &result);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    eventually(
        "half published and handled",
        Duration::from_secs(60),
        || async { done.load(Ordering::SeqCst) == count / 2 && checker.all_acked_handled() },
    )
    .await;
    Scenario {
        client,
        checker,
        done,
        count,
        publishing,
        running,
        gate,
    }
}

/// Waits for the publisher and the consumer to finish, reads the stream back
/// and asserts what a restart may explain.
async fn finish(scenario: Scenario, fault: &str) {
    let Scenario {
        client,
        checker,
        done,
        count,
        publishing,
        running,
        gate: _gate,
    } = scenario;
    drain(&checker, publishing, running).await;
    assert_eq!(done.load(Ordering::SeqCst), count);
    read_back(&client, "CHAOS", &checker).await;
    drop(client);
    checker.report().assert_holds(&Bounds {
        faults: fault.to_owned(),
        // Acks of the events the consumer held when the server closed the
        // connection (at most prefetch + concurrency) can be lost.
        extra_handlings: (PREFETCH + CONCURRENCY) as u64,
        // The retry budget outlasts the time the server is down.
        unknown: 0,
        refused: 0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_while_publishing_and_consuming_loses_nothing() {
    let mut server = NatsServer::start().await.unwrap();
    let scenario = start(&server, "graceful").await;
    // SIGTERM and wait for the exit; publish while it is down; start it
    // again on the same store.
    server.stop().await.unwrap();
    scenario.open_gate();
    server.restart().await.unwrap();
    finish(scenario, "graceful restart x1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lame_duck_mode_while_publishing_and_consuming_loses_nothing() {
    let mut server = NatsServer::start().await.unwrap();
    let scenario = start(&server, "lame-duck").await;
    server.lame_duck().await.unwrap();
    scenario.open_gate();
    // The server closes its clients over the lame duck duration, then exits.
    server.wait_for_exit(Duration::from_secs(90)).await.unwrap();
    server.restart().await.unwrap();
    finish(scenario, "lame-duck exit x1").await;
}
