//! Publishing through a stream-leader change in a 3-node cluster: every publish
//! succeeds (after retries with the same message id) and every event is stored
//! exactly once. Its own binary: it owns a cluster and kills nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use jetevents::provision::StreamSpec;
use jetevents_testcontainers::NatsCluster;
use serde::{Deserialize, Serialize};

mod support;

#[derive(Serialize, Deserialize)]
struct Reading {
    sensor: String,
    n: usize,
}

impl jetevents::Event for Reading {
    const TYPE: &'static str = "plant.sensor.read.v1";
    fn key(&self) -> Option<String> {
        Some(self.sensor.clone())
    }
}

const EVENTS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_survives_a_stream_leader_kill() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let urls = cluster.urls();
    let client = support::connect(&urls[0], "dev", |config| {
        config.servers = urls.clone();
        config.ack_timeout = Duration::from_secs(2);
        config.publish_retry.max_attempts = 20;
        config.publish_retry.max_delay = Duration::from_secs(1);
    })
    .await;
    let spec = StreamSpec::new("PLANT", vec!["dev.plant.>".into()]).replicas(3);
    // Right after the cluster forms, R3 placement can be refused until every
    // peer has caught up with the meta leader.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(err) = client.ensure_stream(&spec).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream not created: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = cluster.stream_leader("PLANT").await.unwrap();

    let published = Arc::new(AtomicUsize::new(0));
    let publisher = client.publisher();
    let task = tokio::spawn({
        let published = published.clone();
        async move {
            let mut receipts = Vec::with_capacity(EVENTS);
            for n in 0..EVENTS {
                let event = Reading {
                    sensor: format!("s{}", n % 7),
                    n,
                };
                let receipt = publisher.publish(&event).await;
                published.fetch_add(1, Ordering::SeqCst);
                receipts.push(receipt);
            }
            receipts
        }
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while published.load(Ordering::SeqCst) < EVENTS / 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing stalled before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.kill(leader).await.unwrap();
    let new_leader = cluster
        .wait_for_new_stream_leader("PLANT", leader)
        .await
        .unwrap();
    assert_ne!(new_leader, leader);

    let receipts = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .expect("publishing did not finish")
        .unwrap();
    let mut ids = HashSet::new();
    for (n, receipt) in receipts.into_iter().enumerate() {
        let receipt = receipt.unwrap_or_else(|err| panic!("publish {n} failed: {err}"));
        ids.insert(receipt.event_id);
    }
    assert_eq!(ids.len(), EVENTS);

    // Every event stored exactly once.
    // The JetStream API (meta leader) may still be settling after the kill.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        if let Ok(stream) = client.jetstream().get_stream("PLANT").await {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream info unavailable after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stream.info().await.unwrap().state.messages, EVENTS as u64);
    // Creating a consumer right after a leader change can outlast the
    // client's short (2 s) API timeout: retry within a deadline.
    let mut messages = loop {
        let created = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await;
        match created {
            Ok(consumer) => break consumer.messages().await.unwrap(),
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no consumer after the kill: {err}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut seen = HashSet::new();
    for _ in 0..EVENTS {
        let message = messages.next().await.unwrap().unwrap();
        let envelope =
            jetevents::codec::decode(message.headers.as_ref(), &message.payload).unwrap();
        assert!(
            seen.insert(envelope.id.clone()),
            "{} stored twice",
            envelope.id
        );
        assert!(ids.contains(&envelope.id));
    }
}
