//! A partitioned group on a 3-node cluster with an R3 stream: the run of
//! `partitioned_order.rs` (members SIGKILLed and added, transient failures)
//! with the stream leader SIGKILLed too. Its own binary: it owns a cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents_testcontainers::NatsCluster;

mod checker;
mod partitioned_common;
mod support;
use checker::scaled;
use partitioned_common::Scenario;

/// A member of the group. Runs only when re-executed by the parent test.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_member() {
    partitioned_common::child_member().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_publish_order_through_a_stream_leader_kill() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = support::connect(&urls[0], "dev", |config| {
        config.servers = urls.clone();
        // Outlast an election: publishes are retried, never left unknown.
        config.ack_timeout = Duration::from_secs(1);
        config.publish_retry.max_attempts = 30;
        config.publish_retry.max_delay = Duration::from_secs(1);
    })
    .await;
    partitioned_common::stream(&client, "PCG", 8, 3).await;
    let run = Scenario {
        name: "partitioned-cluster-leader-kill",
        child_test: "child_member",
        urls,
        env: "dev".to_owned(),
        stream: "PCG".to_owned(),
        partitions: 8,
        keys: 200,
        // Per unit of `JETEVENTS_FAULT_SCALE`.
        per_key: scaled(50) as u32,
    };
    run.members_killed_and_added(&client, Some(&mut cluster))
        .await;
}
