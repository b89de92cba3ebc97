//! Scenario 9: scenarios 1 (pipelined publish) and 3 (consume) on a 3-node
//! cluster with R3 streams, both sides connected to the same node.

use std::sync::atomic::Ordering;

use jetevents_testcontainers::{Backend, NatsCluster};

use crate::common::{self, Raw, STREAM_REPLICAS};
use crate::report::Scenario;
use crate::{consume, publish, Settings};

pub async fn cluster(settings: &Settings) -> Scenario {
    let cluster = NatsCluster::start_with(Backend::Binary)
        .await
        .expect("start a 3-node cluster (binary backend)");
    let url = cluster.urls()[0].clone();
    eprintln!("  3-node cluster, clients on {url}");
    let je = common::jetevents_client(&url).await;
    let raw = Raw::connect(&url).await;
    STREAM_REPLICAS.store(3, Ordering::Relaxed);
    let parts = [
        ("publish", publish::pipelined(settings, &je, &raw).await),
        ("consume", consume::throughput(settings, &je, &raw).await),
    ];
    STREAM_REPLICAS.store(1, Ordering::Relaxed);
    let _ = raw.js.delete_stream(common::STREAM).await;
    let mut scenario = Scenario::new(
        "9",
        format!(
            "3-node cluster, R3 stream: {}; {}",
            parts[0].1.title, parts[1].1.title
        ),
    );
    for (part, result) in parts {
        for mut metric in result.metrics {
            metric.name = format!("{part} {}", metric.name);
            scenario.push(metric);
        }
    }
    // The harness relays the routes between the nodes through TCP proxies
    // in this process, so replication traffic adds to both sides' CPU.
    scenario.notes.push(
        "client CPU includes the harness's route proxies (replication traffic), both sides alike"
            .to_owned(),
    );
    scenario
}
