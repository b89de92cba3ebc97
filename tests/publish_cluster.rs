//! Publishing through a stream-leader change in a 3-node cluster: every publish
//! succeeds (after retries with the same message id) and every event is stored
//! exactly once. Its own binary: it owns a cluster and kills nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jetevents_testcontainers::NatsCluster;

mod checker;
mod support;
use checker::{
    chaos_stream, eventually, publish_in_background, read_back, scaled, Bounds, Checker,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_a_stream_leader_kill() {
    let count = scaled(200);
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = support::connect(&urls[0], "dev", |config| {
        config.servers = urls.clone();
        config.ack_timeout = Duration::from_secs(2);
        config.publish_retry.max_attempts = 20;
        config.publish_retry.max_delay = Duration::from_secs(1);
    })
    .await;
    chaos_stream(&client, "PLANT", 3).await;
    let leader = cluster.stream_leader("PLANT").await.unwrap();

    let checker = Checker::publish_only("publish-leader-kill");
    let done = Arc::new(AtomicUsize::new(0));
    let publishing = publish_in_background(&client, "plant", count, &checker, &done);
    eventually(
        "a quarter published before the kill",
        Duration::from_secs(60),
        || async { done.load(Ordering::SeqCst) >= count / 4 },
    )
    .await;
    cluster.kill(leader).await.unwrap();
    let new_leader = cluster
        .wait_for_new_stream_leader("PLANT", leader)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);

    tokio::time::timeout(Duration::from_secs(120), publishing)
        .await
        .expect("publishing did not finish")
        .unwrap();
    read_back(&client, "PLANT", &checker).await;
    checker
        .report()
        .assert_holds(&Bounds {
            faults: "leader kill x1".to_owned(),
            // Publish-only: a duplicate would be an event stored twice.
            extra_handlings: 0,
            // The budget (20 attempts) outlasts the election.
            unknown: 0,
            refused: 0,
        })
        .assert_all_acked();
}
