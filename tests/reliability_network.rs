//! Network faults through the harness's fault proxy, while publishing and
//! consuming: a stalled connection, a dropped connection and a black hole.
//! After each, publishing and consuming resume and no acked event is lost.
//!
//! The server is shared (the faults are between this test's client and the
//! proxy); scale the event count with `JETEVENTS_FAULT_SCALE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use jetevents::client::Client;
use jetevents::publish::PublishErrorKind;
use jetevents_testcontainers::{FaultMode, FaultProxy};

mod checker;
mod support;
use checker::{
    chaos_stream, consumer, drain, eventually, op, publish_in_background, read_back, scaled,
    Bounds, Checker, Running,
};

const CONCURRENCY: usize = 16;
/// Small, so the duplicates a fault can explain are few.
const PREFETCH: usize = 32;
/// What the consumer can hold unacked at a fault: the events whose acks a
/// cut or a black hole can take.
const HELD: usize = PREFETCH + CONCURRENCY;

struct Setup {
    proxy: FaultProxy,
    client: Client,
    /// A second client through the same proxy that gives up after one short
    /// attempt: its publish shows whether the fault is in place.
    probe: Client,
    stream: String,
}

/// Short, so the black-hole test sees the client notice the silence
/// within seconds (three missed pings).
const SHORT_PING_INTERVAL: Duration = Duration::from_millis(500);

async fn setup() -> Setup {
    setup_pinging(jetevents::config::Config::default().ping_interval).await
}

async fn setup_pinging(ping_interval: Duration) -> Setup {
    let server = support::shared_server().await;
    let upstream = format!("127.0.0.1:{}", server.client_port())
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let env = support::unique("net");
    let client = support::connect(&proxy.url(), &env, |config| {
        config.ping_interval = ping_interval;
        config.ack_timeout = Duration::from_millis(500);
        config.publish_retry.max_attempts = 40;
        config.publish_retry.max_delay = Duration::from_millis(500);
    })
    .await;
    let probe = support::connect(&proxy.url(), &env, |config| {
        config.ping_interval = ping_interval;
        config.ack_timeout = Duration::from_millis(300);
        config.publish_retry.max_attempts = 1;
    })
    .await;
    let stream = support::unique("NET");
    chaos_stream(&client, &stream, 1).await;
    Setup {
        proxy,
        client,
        probe,
        stream,
    }
}

async fn start_consumer(setup: &Setup, checker: &Arc<Checker>) -> Running {
    let built = consumer(&setup.client, "net", &setup.stream, checker, Duration::ZERO)
        .ack_wait(Duration::from_secs(2))
        .pull_expiry(Duration::from_millis(500))
        .concurrency(CONCURRENCY)
        .prefetch(PREFETCH)
        .build()
        .await
        .unwrap();
    Running::start(built)
}

/// Drains the run and reads the stream back.
async fn finish(
    setup: &Setup,
    checker: &Arc<Checker>,
    publishing: tokio::task::JoinHandle<()>,
    running: Running,
) -> checker::Report {
    drain(checker, publishing, running).await;
    read_back(&setup.client, &setup.stream, checker).await;
    checker.report()
}

/// Waits until the publisher is at round `round` of `rounds` (evenly spread
/// over the run), so each fault hits it mid-stream.
async fn wait_for_round(done: &AtomicUsize, count: usize, round: usize, rounds: usize) {
    let target = (round + 1) * count / (rounds + 1);
    eventually(
        "publishing progressed",
        Duration::from_secs(120),
        || async { done.load(Ordering::SeqCst) >= target },
    )
    .await;
}

/// Publishes `probe` through the impatient client and checks that the
/// fault in place left its outcome unknown.
async fn probe_unknown(setup: &Setup, checker: &Checker, probe: &str) {
    let probe = op(probe, 0, 10);
    let result = setup.probe.publisher().publish(&probe).await;
    assert!(
        matches!(
            result.as_ref().map_err(|e| e.kind()),
            Err(PublishErrorKind::OutcomeUnknown { .. })
        ),
        "{result:?}"
    );
    checker.record(&probe.op, &result);
}

async fn wait_disconnected(client: &Client) {
    eventually(
        "the client sees the disconnect",
        Duration::from_secs(10),
        || async { client.nats().unwrap().connection_state() != State::Connected },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_heals_without_loss_or_duplicates() {
    let setup = setup().await;
    let count = scaled(300);
    let faults = scaled(1);
    let checker = Checker::new("stall");
    let done = Arc::new(AtomicUsize::new(0));
    let running = start_consumer(&setup, &checker).await;
    let publishing = publish_in_background(&setup.client, "stall", count, &checker, &done);
    for round in 0..faults {
        wait_for_round(&done, count, round, faults).await;
        setup.proxy.set_mode(FaultMode::Stall);
        // The stall is in place: a publish now gets no ack in time.
        probe_unknown(&setup, &checker, &format!("stall-probe{round}")).await;
        setup.proxy.set_mode(FaultMode::Pass);
    }
    // Held bytes are delivered late, not dropped: the probes arrive too.
    eventually("every probe handled", Duration::from_secs(60), || async {
        (0..faults).all(|round| checker.is_handled(&format!("stall-probe{round}-0")))
    })
    .await;

    let report = finish(&setup, &checker, publishing, running).await;
    // Retries carried the same id, so the server stored each op once, and
    // no ack was lost. Only the probes (one attempt each) are unknown.
    report.assert_holds(&Bounds {
        faults: format!("stall x{faults}"),
        extra_handlings: 0,
        unknown: faults,
        refused: 0,
    });
    assert_eq!(report.unknown, faults, "{report}");
    assert_eq!(report.unknown_stored, Some(faults), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_detected_and_reconnected_without_loss() {
    let setup = setup().await;
    let count = scaled(300);
    let faults = scaled(1);
    let checker = Checker::new("connection-drop");
    let done = Arc::new(AtomicUsize::new(0));
    let running = start_consumer(&setup, &checker).await;
    let publishing = publish_in_background(&setup.client, "drop", count, &checker, &done);
    for round in 0..faults {
        wait_for_round(&done, count, round, faults).await;
        setup.proxy.set_mode(FaultMode::Close);
        wait_disconnected(&setup.client).await;
        setup.proxy.set_mode(FaultMode::Pass);
        eventually("the client reconnects", Duration::from_secs(30), || async {
            setup.client.nats().unwrap().connection_state() == State::Connected
        })
        .await;
    }

    let report = finish(&setup, &checker, publishing, running).await;
    report.assert_holds(&Bounds {
        faults: format!("cut x{faults}"),
        // Acks of the events held at a cut can be lost: those come back.
        extra_handlings: (faults * HELD) as u64,
        // The retry budget outlasts the reconnect.
        unknown: 0,
        refused: 0,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_connection_loses_no_acked_event() {
    let setup = setup_pinging(SHORT_PING_INTERVAL).await;
    let count = scaled(300);
    let faults = scaled(1);
    let checker = Checker::new("black-hole");
    let done = Arc::new(AtomicUsize::new(0));
    let running = start_consumer(&setup, &checker).await;
    let publishing = publish_in_background(&setup.client, "hole", count, &checker, &done);
    for round in 0..faults {
        wait_for_round(&done, count, round, faults).await;
        // Both clients are back from the previous round: a publish buffered
        // while disconnected would be sent after the hole closes.
        eventually(
            "both clients connected",
            Duration::from_secs(30),
            || async {
                setup.client.nats().unwrap().connection_state() == State::Connected
                    && setup.probe.nats().unwrap().connection_state() == State::Connected
            },
        )
        .await;
        let discarded = setup.proxy.discarded_bytes();
        setup.proxy.set_mode(FaultMode::Drop);
        probe_unknown(&setup, &checker, &format!("hole-probe{round}")).await;
        assert!(setup.proxy.discarded_bytes() > discarded);
        // Nothing closes the connection: the client must notice the
        // silence itself, from its unanswered pings.
        wait_disconnected(&setup.client).await;
        setup.proxy.set_mode(FaultMode::Pass);
    }

    let report = finish(&setup, &checker, publishing, running).await;
    report.assert_holds(&Bounds {
        faults: format!("black hole x{faults}"),
        // No delivery passes the hole, so only the acks of the events held
        // when it opened can be lost.
        extra_handlings: (faults * HELD) as u64,
        // The probes; the main client's budget outlasts the hole.
        unknown: faults,
        refused: 0,
    });
    // The probes went into the hole: unknown outcome, never stored.
    assert_eq!(report.unknown, faults, "{report}");
    assert_eq!(report.unknown_stored, Some(0), "{report}");
}
