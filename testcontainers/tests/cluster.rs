//! A 3-node cluster: R3 stream, leader failover, data still readable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use async_nats::jetstream;
use common::{backends, create_stream, publish};
use jetevents_testcontainers::{Backend, NatsCluster};

#[tokio::test]
async fn stream_leader_failover() {
    for backend in backends().await {
        if backend == Backend::Docker && !jetevents_testcontainers::docker_host_network().await {
            assert!(
                !jetevents_testcontainers::docker_required(),
                "JETEVENTS_REQUIRE_DOCKER=1 but the docker cluster needs JETEVENTS_DOCKER_NETWORK=host"
            );
            eprintln!("docker cluster skipped: needs JETEVENTS_DOCKER_NETWORK=host");
            continue;
        }
        let mut cluster = NatsCluster::start_with(backend).await.unwrap();
        assert_eq!(cluster.urls().len(), 3);
        for i in 0..3 {
            assert_eq!(
                cluster.node(i).server_name().await.unwrap(),
                format!("n{}", i + 1)
            );
        }
        let client = async_nats::ConnectOptions::new()
            .connect(cluster.urls())
            .await
            .unwrap();
        let js = jetstream::new(client);
        create_stream(&js, "ORDERS", 3).await;
        let seq = publish(&js, "ORDERS.created".into(), "order-1").await;

        let leader = cluster.stream_leader("ORDERS").await.unwrap();
        cluster.kill(leader).await.unwrap();
        assert!(!cluster.node(leader).is_running().await);
        let new_leader = cluster
            .wait_for_new_stream_leader("ORDERS", leader)
            .await
            .unwrap();
        assert_ne!(new_leader, leader, "{backend:?}");

        // Read through a surviving node.
        let client = async_nats::connect(cluster.node(new_leader).url())
            .await
            .unwrap();
        let js = jetstream::new(client);
        // The JetStream API answers again once the meta leader is settled too
        // (it may have been on the killed node): poll with a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let message = loop {
            let attempt = async {
                let stream = js.get_stream("ORDERS").await.ok()?;
                stream.get_raw_message(seq).await.ok()
            };
            if let Some(message) = attempt.await {
                break message;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: stream unreadable after the leader kill"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(&message.payload[..], b"order-1", "{backend:?}");

        // The killed node comes back and catches up.
        cluster.restart(leader).await.unwrap();
        cluster.wait_for_cluster_ready().await.unwrap();
    }
}
