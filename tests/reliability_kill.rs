//! nats-server killed with SIGKILL in the middle of a pipelined publish,
//! restarted on the same file store, several cycles: every acked event is in
//! the stream afterwards, and none is stored twice. Once with a retry budget
//! tuned to outlast a restart, once with the library's defaults.
//!
//! Its own binary and its own server: it kills it. Scale the number of kills
//! with `JETEVENTS_FAULT_SCALE` (three per unit in the tuned runs, one in the
//! default one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::provision::StreamSpec;
use jetevents_testcontainers::NatsServer;

mod checker;
mod support;
use checker::{eventually, op, read_back, scaled, Bounds, Checker};

const WINDOW: usize = 256;

/// Cycles run beyond those asked for while no kill has hit a publish in flight.
const EXTRA_CYCLES: usize = 4;

async fn stored(client: &jetevents::client::Client, stream: &str) -> u64 {
    match client.jetstream().unwrap().get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// How the publishing client is configured.
#[derive(Clone, Copy, PartialEq)]
enum Retries {
    /// A short ack timeout and a budget that outlasts a restart.
    Tuned,
    /// `Config::default()`: what a service gets without tuning.
    Default,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pipelined_publish_loses_no_acked_event() {
    sigkill_cycles(NatsServer::builder(), "CHAOS", Retries::Tuned, scaled(3)).await;
}

/// The same with the library's default publish timeout and retries: the
/// budget may run out before the server is back, so outcomes may be unknown
/// (or, against a recovering JetStream, refused); each must then be stored at
/// most once, and a refused one not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_default_retry_settings_loses_no_acked_event() {
    sigkill_cycles(
        NatsServer::builder(),
        "CHAOS_DEFAULTS",
        Retries::Default,
        scaled(1),
    )
    .await;
}

/// The setting RELIABILITY.md recommends for critical streams: every write
/// fsynced before it is acked. A process kill leaves the page cache intact
/// either way; this runs the same cycles with the setting on to show it
/// holds the same guarantees at its cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_sync_always_loses_no_acked_event() {
    sigkill_cycles(
        NatsServer::builder().sync_interval("always"),
        "CHAOS_SYNCED",
        Retries::Tuned,
        scaled(3),
    )
    .await;
}

async fn sigkill_cycles(
    builder: jetevents_testcontainers::NatsServerBuilder,
    stream: &str,
    retries: Retries,
    cycles: usize,
) {
    let per_cycle = 1_500;
    let mut server = builder.start().await.unwrap();
    let client = support::connect(&server.url(), "dev", |config| {
        if retries == Retries::Tuned {
            // After a kill every ack in flight times out; publish_many counts
            // each ack's timeout from its send, so the window recovers within
            // about one ack timeout, not window x timeout.
            config.ack_timeout = Duration::from_secs(1);
            // Enough budget to outlast a restart (the client reconnects
            // within a few seconds), so most outcomes are known.
            config.publish_retry.max_attempts = 15;
            config.publish_retry.max_delay = Duration::from_secs(1);
        }
    })
    .await;
    let spec = StreamSpec::new(stream, vec!["dev.chaos.>".into()]);
    client.ensure_stream(&spec).await.unwrap();

    let checker = Checker::publish_only(&format!("sigkill-pipelined-{stream}"));
    let mut killed_mid_publish = 0;
    // A kill can land after the whole cycle is stored (the publisher beat
    // the poll and the kill); such a cycle still checks the restart, but the
    // test needs at least one kill in flight: it runs a few more cycles
    // until one hits.
    let mut cycle = 0;
    while cycle < cycles || (killed_mid_publish == 0 && cycle < cycles + EXTRA_CYCLES) {
        let before = stored(&client, stream).await;
        let events: Vec<_> = (0..per_cycle)
            .map(|n| op("kill", cycle * per_cycle + n, 200))
            .collect();
        let publisher = client.publisher();
        let task = tokio::spawn({
            let events = events.clone();
            async move { publisher.publish_many(&events, WINDOW).await }
        });
        // Kill once a tenth of this cycle is stored: the rest is in flight
        // or not yet sent.
        eventually(
            "a tenth of the cycle stored",
            Duration::from_secs(60),
            || async { stored(&client, stream).await >= before + (per_cycle / 10) as u64 },
        )
        .await;
        let killed_at = std::time::Instant::now();
        server.kill().await.unwrap();
        server.restart().await.unwrap();
        // Fewer than the whole cycle stored when the server is back: the kill
        // hit the publish in the middle (the client only now resends).
        if stored(&client, stream).await < before + per_cycle as u64 {
            killed_mid_publish += 1;
        }

        let results = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("publish_many did not return after the restart")
            .unwrap();
        // Reported, not asserted: how long the pipeline took to recover.
        let recovered_after = killed_at.elapsed();
        assert_eq!(results.len(), events.len());
        for (event, result) in events.iter().zip(&results) {
            checker.record(&event.op, result);
        }
        println!(
            "cycle {cycle}: {} acked, {} failed, publish_many returned {recovered_after:?} after the kill",
            results.iter().filter(|r| r.is_ok()).count(),
            results.iter().filter(|r| r.is_err()).count()
        );
        cycle += 1;
    }
    let cycles = cycle;

    let read = read_back(&client, stream, &checker).await;
    let report = checker.report();
    println!("read back {read} messages after {cycles} SIGKILL cycles, {killed_mid_publish} of them mid-publish");
    assert!(killed_mid_publish > 0, "no kill hit a publish in flight");
    // Only the acks in flight at a kill (at most the window) can stay
    // unknown. The tuned budget outlasts a restart, so nothing is refused;
    // the default one may meet JetStream still recovering (503) on its last
    // attempts, which again concerns only events in flight at the kill.
    let in_flight = WINDOW * cycles;
    report
        .assert_holds(&Bounds {
            faults: format!("SIGKILL x{cycles} ({killed_mid_publish} mid-publish)"),
            // Publish-only: a duplicate would be an event stored twice.
            extra_handlings: 0,
            unknown: in_flight,
            refused: match retries {
                Retries::Tuned => 0,
                Retries::Default => in_flight,
            },
        })
        .assert_acked_at_least(per_cycle);
}
