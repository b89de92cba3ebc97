//! A 3-node cluster with an R3 stream: the stream leader is killed (SIGKILL)
//! while events are published and consumed. No acked event is lost, publishing
//! resumes on the new leader, and the killed node rejoins. Once with a retry
//! budget tuned to outlast an election, once with the library's defaults.
//!
//! Its own binary: it owns a cluster and kills nodes. Scale the event count
//! and the number of kills (one per unit) with `JETEVENTS_FAULT_SCALE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents_testcontainers::NatsCluster;

mod checker;
mod support;
use checker::{
    chaos_stream, consumer, drain, eventually, publish_in_background, read_back, replicas_current,
    scaled, Bounds, Checker, Running,
};

const CONCURRENCY: usize = 16;
/// Small, so the duplicates a kill can explain are few.
const PREFETCH: usize = 32;

/// How the publishing client is configured.
#[derive(Clone, Copy, PartialEq)]
enum Retries {
    /// A short ack timeout and a budget that outlasts an election.
    Tuned,
    /// `Config::default()`: what a service gets without tuning.
    Default,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_during_publish_and_consume_loses_nothing() {
    leader_kills(Retries::Tuned, scaled(400), scaled(1)).await;
}

/// The same with the library's default publish timeout and retries: a
/// publish that meets no leader for its whole budget is refused
/// (`Unavailable`), one whose acks stay away is unknown; neither may be
/// stored twice, and a refused one not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_with_default_retry_settings_loses_nothing() {
    leader_kills(Retries::Default, scaled(200), scaled(1)).await;
}

async fn leader_kills(retries: Retries, count: usize, kills: usize) {
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = support::connect(&urls[0], "dev", |config| {
        config.servers = urls.clone();
        if retries == Retries::Tuned {
            config.ack_timeout = Duration::from_secs(1);
            config.publish_retry.max_attempts = 30;
            config.publish_retry.max_delay = Duration::from_secs(1);
        }
    })
    .await;
    chaos_stream(&client, "CHAOS", 3).await;
    let leader = cluster.stream_leader("CHAOS").await.unwrap();

    let checker = Checker::new(match retries {
        Retries::Tuned => "cluster-leader-kill",
        Retries::Default => "cluster-leader-kill-default-retries",
    });
    let running = Running::start(
        consumer(&client, "ledger", "CHAOS", &checker, Duration::ZERO)
            .ack_wait(Duration::from_secs(3))
            .pull_expiry(Duration::from_secs(1))
            .concurrency(CONCURRENCY)
            .prefetch(PREFETCH)
            .build()
            .await
            .unwrap(),
    );

    let done = Arc::new(AtomicUsize::new(0));
    let publishing = publish_in_background(&client, "cluster", count, &checker, &done);

    // The kills are spread over the run; each killed node is restarted
    // before the next.
    let mut leader = leader;
    for round in 0..kills {
        let target = (round + 1) * count / (kills + 1);
        eventually(
            "publishing progressed",
            Duration::from_secs(120),
            || async { done.load(Ordering::SeqCst) >= target && checker.handled_distinct() > 0 },
        )
        .await;
        cluster.kill(leader).await.unwrap();
        let acked_at_kill = checker.acked_count();
        let new_leader = cluster
            .wait_for_new_stream_leader("CHAOS", leader)
            .await
            .unwrap();
        assert_ne!(new_leader, leader);
        if acked_at_kill < count {
            // Publishing resumes on the new leader.
            eventually("an ack after the kill", Duration::from_secs(60), || async {
                checker.acked_count() > acked_at_kill
            })
            .await;
        }
        // The killed node comes back and catches up.
        cluster.restart(leader).await.unwrap();
        cluster.wait_for_cluster_ready().await.unwrap();
        // Before the next kill, both followers must be current again, or
        // killing the leader leaves the stream without a quorum.
        eventually("all replicas current", Duration::from_secs(60), || async {
            replicas_current(&client, "CHAOS").await
        })
        .await;
        leader = new_leader;
    }

    drain(&checker, publishing, running).await;
    read_back(&client, "CHAOS", &checker).await;
    checker
        .report()
        .assert_holds(&Bounds {
            faults: format!("leader kill x{kills}"),
            // Per kill: the events the instance held unacked (at most
            // prefetch + concurrency) and as many acks it had sent that the
            // killed leader had not yet replicated come back once more.
            extra_handlings: (kills * 2 * (PREFETCH + CONCURRENCY)) as u64,
            // One publish at a time: only the one in flight at a kill can
            // run out of budget without an answer.
            unknown: kills,
            refused: match retries {
                Retries::Tuned => 0,
                // Each refusal spent the whole (short) default budget on "no
                // leader" while one was elected; how many depends on the
                // election's length, so only their truth is checked: none
                // of them may be stored (phantom).
                Retries::Default => count,
            },
        })
        .assert_acked_at_least(count / 2);
}
