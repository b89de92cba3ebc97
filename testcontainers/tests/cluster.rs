//! A 3-node cluster: R3 stream, leader failover, data still readable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use async_nats::jetstream;
use common::{backends, create_stream, publish};
use jetevents_testcontainers::{Backend, FaultMode, HarnessErrorKind, NatsCluster};

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

/// The names of the peers node `i` has a route to, from its `/routez`.
async fn routed_peers(cluster: &NatsCluster, i: usize) -> Vec<String> {
    let routez = cluster.node(i).monitor_json("/routez").await.unwrap();
    let mut peers: Vec<String> = routez["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["remote_name"].as_str().map(str::to_owned))
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Every route goes through the partition's proxies: once the links to the
/// stream leader are reset, no node keeps a route to it (a route dialled
/// from gossip would bypass them), the other two elect a leader and take
/// writes from a client on their side while a client of the isolated node
/// stays connected to it; healed, the routes and the cluster come back.
#[tokio::test]
async fn partition_isolates_the_leader_and_heals() {
    let cluster = NatsCluster::start_with(Backend::Binary).await.unwrap();
    let client = async_nats::connect(cluster.urls()[0].clone())
        .await
        .unwrap();
    create_stream(&jetstream::new(client), "PARTED", 3).await;
    for round in 0..2 {
        let leader = cluster.stream_leader("PARTED").await.unwrap();
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let leader_name = format!("n{}", leader + 1);
        let cut_off = async_nats::connect(cluster.node(leader).url())
            .await
            .unwrap();
        cluster
            .partition_with(&[&[leader], &others], FaultMode::Close)
            .unwrap();
        for &i in &others {
            wait_until("the majority has no route to the old leader", async || {
                !routed_peers(&cluster, i).await.contains(&leader_name)
            })
            .await;
        }
        assert_eq!(routed_peers(&cluster, leader).await, Vec::<String>::new());
        assert_eq!(cluster.route_connections(leader, others[0]), 0);
        let new_leader = cluster
            .wait_for_stream_leader_among("PARTED", &others)
            .await
            .unwrap();
        assert_ne!(new_leader, leader, "round {round}");
        let majority = jetstream::new(
            async_nats::connect(cluster.node(others[0]).url())
                .await
                .unwrap(),
        );
        publish(&majority, "PARTED.x".into(), "on the majority side").await;
        assert_eq!(
            cut_off.connection_state(),
            async_nats::connection::State::Connected,
            "the isolated node's client stays connected"
        );

        cluster.heal();
        for i in 0..3 {
            wait_until("every node routed to both others again", async || {
                routed_peers(&cluster, i).await.len() == 2
            })
            .await;
        }
        cluster.wait_for_cluster_ready().await.unwrap();
    }
}

/// A paused node (SIGSTOP) is still running but answers nothing; resumed, it
/// answers again and the cluster is whole.
#[tokio::test]
async fn pause_and_resume_a_node() {
    let cluster = NatsCluster::start_with(Backend::Binary).await.unwrap();
    cluster.pause(1).await.unwrap();
    assert!(cluster.node(1).is_running().await);
    let err = cluster.node(1).monitor_json("/varz").await.unwrap_err();
    assert_eq!(err.kind(), HarnessErrorKind::Monitoring, "{err}");
    cluster.resume(1).await.unwrap();
    cluster.node(1).monitor_json("/varz").await.unwrap();
    cluster.wait_for_cluster_ready().await.unwrap();
}
