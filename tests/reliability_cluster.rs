//! A 3-node cluster with an R3 stream: the stream leader is killed (SIGKILL)
//! while events are published and consumed. No acked event is lost, publishing
//! resumes on the new leader, and the killed node rejoins.
//!
//! Its own binary: it owns a cluster and kills nodes. Scale the event count
//! with `JETEVENTS_FAULT_SCALE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents_testcontainers::NatsCluster;

mod checker;
mod support;
use checker::{chaos_stream, consumer, eventually, op, scaled, Checker, Running};

/// Whether the stream has a leader and two current, online followers.
async fn replicas_current(client: &jetevents::client::Client, stream: &str) -> bool {
    let Ok(mut stream) = client.jetstream().get_stream(stream).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    match &info.cluster {
        Some(cluster) => {
            cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current && !r.offline)
        }
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_during_publish_and_consume_loses_nothing() {
    let count = scaled(400);
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = support::connect(&urls[0], "dev", |config| {
        config.servers = urls.clone();
        config.ack_timeout = Duration::from_secs(1);
        config.publish_retry.max_attempts = 30;
        config.publish_retry.max_delay = Duration::from_secs(1);
    })
    .await;
    chaos_stream(&client, "CHAOS", 3).await;
    let leader = cluster.stream_leader("CHAOS").await.unwrap();

    let checker = Checker::new("cluster-leader-kill");
    let running = Running::start(
        consumer(&client, "ledger", "CHAOS", &checker, Duration::ZERO)
            .ack_wait(Duration::from_secs(3))
            .pull_expiry(Duration::from_secs(1))
            .concurrency(16)
            .build()
            .await
            .unwrap(),
    );

    let done = Arc::new(AtomicUsize::new(0));
    let publishing = tokio::spawn({
        let publisher = client.publisher();
        let checker = checker.clone();
        let done = done.clone();
        async move {
            for n in 0..count {
                let event = op("cluster", n, 100);
                let result = publisher.publish(&event).await;
                checker.record(&event.op, &result);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });

    // One leader kill by default, one per unit of JETEVENTS_FAULT_SCALE,
    // spread over the run; each killed node is restarted before the next.
    let kills = scaled(1);
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

    tokio::time::timeout(Duration::from_secs(180), publishing)
        .await
        .expect("publishing did not finish after the leader changes")
        .unwrap();

    eventually(
        "every acked op handled",
        Duration::from_secs(90),
        || async { checker.all_acked_handled() },
    )
    .await;
    assert!(!running.is_finished(), "the runner gave up");
    running.stop().await;
    // Acks in flight to the killed leader may be lost: redeliveries are the
    // duplicates the fault explains, reported but allowed.
    checker
        .report()
        .assert_no_loss()
        .assert_none_refused()
        .assert_acked_at_least(count / 2);
}
