//! The checker run on a 3-node cluster that the partition and pause tests
//! share: an R3 stream, a client on every node (so each side of a fault
//! keeps its clients), each publishing one event at a time and running one
//! instance of the same consumer group, until the test's fault cycles are
//! done; then every acked event must be handled.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents_testcontainers::NatsCluster;

use super::{
    chaos_stream, consumer, drain, eventually, op, read_back, replicas_current, Checker, Report,
    Running,
};

pub const NODES: usize = 3;
pub const CONCURRENCY: usize = 4;
/// Small, so the duplicates a fault can explain are few.
pub const PREFETCH: usize = 8;
/// What one instance can hold unacked when its acks are cut off.
pub const HELD: usize = PREFETCH + CONCURRENCY;
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a healed cluster may take to be ready and current again (after
/// a leader's routes were reset it took 15-80 s here, RELIABILITY.md).
pub const HEAL_LIMIT: Duration = Duration::from_secs(180);

/// Acks the publishers must get while a fault lasts: the other two nodes
/// take writes.
pub const ACKS_DURING_FAULT: usize = 20;

/// The publishers' runs, one per node: their ops are `on-n1-0`, ...
const RUNS: [&str; NODES] = ["on-n1", "on-n2", "on-n3"];

/// What one node's publisher saw, for the log: publishes that needed more
/// than one attempt's time, and the longest one.
#[derive(Default)]
struct PublishTimes {
    slow: AtomicUsize,
    slowest_ms: AtomicU64,
}

/// Publishes one event at a time through `client` until `stop`.
fn publish_until_stopped(
    client: &Client,
    run: &'static str,
    checker: &Arc<Checker>,
    stop: &Arc<AtomicBool>,
    times: &Arc<PublishTimes>,
) -> tokio::task::JoinHandle<()> {
    let publisher = client.publisher();
    let (checker, stop, times) = (checker.clone(), stop.clone(), times.clone());
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let event = op(run, n, 100);
            let started = Instant::now();
            let result = publisher.publish(&event).await;
            let took = started.elapsed();
            if took > ACK_TIMEOUT {
                times.slow.fetch_add(1, Ordering::SeqCst);
            }
            times
                .slowest_ms
                .fetch_max(took.as_millis() as u64, Ordering::SeqCst);
            if let Err(err) = &result {
                // What a client sees through a fault, for RELIABILITY.md.
                println!(
                    "publish {} failed after {took:?}: {err}: {:?}",
                    event.op,
                    std::error::Error::source(err).map(ToString::to_string)
                );
            }
            checker.record(&event.op, &result);
            n += 1;
        }
    })
}

/// Publishers and consumer instances on every node of a cluster.
pub struct ClusterRun {
    pub clients: Vec<Client>,
    pub checker: Arc<Checker>,
    stream: String,
    instances: Vec<Running>,
    stop: Arc<AtomicBool>,
    publishers: Vec<tokio::task::JoinHandle<()>>,
    times: Vec<Arc<PublishTimes>>,
}

impl ClusterRun {
    /// Creates the R3 stream `stream` and starts publishing and consuming
    /// on every node, recorded in a checker named `name`.
    pub async fn start(cluster: &NatsCluster, stream: &str, name: &str) -> ClusterRun {
        let mut clients = Vec::new();
        for url in cluster.urls() {
            // One node each. The retry budget (60 x 1 s) outlasts a fault
            // cycle and an election.
            clients.push(
                crate::support::connect(&url, "dev", |config| {
                    config.ack_timeout = ACK_TIMEOUT;
                    config.publish_retry.max_attempts = 60;
                    config.publish_retry.max_delay = Duration::from_secs(1);
                })
                .await,
            );
        }
        chaos_stream(&clients[0], stream, 3).await;
        // A consumer asked for before the new stream has a leader and
        // current followers can time out (seen on a loaded machine).
        eventually("the new stream's replicas current", HEAL_LIMIT, || async {
            replicas_current(&clients[0], stream).await
        })
        .await;
        let checker = Checker::new(name);
        let mut instances = Vec::new();
        for client in &clients {
            let built = consumer(client, "ledger", stream, &checker, Duration::ZERO)
                .ack_wait(Duration::from_secs(3))
                .pull_expiry(Duration::from_secs(1))
                .concurrency(CONCURRENCY)
                .prefetch(PREFETCH)
                .build()
                .await
                .unwrap();
            instances.push(Running::start(built));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let times: Vec<Arc<PublishTimes>> = RUNS.iter().map(|_| Arc::default()).collect();
        let publishers = clients
            .iter()
            .zip(RUNS)
            .zip(&times)
            .map(|((client, run), times)| {
                publish_until_stopped(client, run, &checker, &stop, times)
            })
            .collect();
        ClusterRun {
            clients,
            checker,
            stream: stream.to_owned(),
            instances,
            stop,
            publishers,
            times,
        }
    }

    /// Stops publishing, waits until every acked op is handled, stops the
    /// instances (none may have given up), reads the stream back and
    /// reports.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        let publishers = self.publishers;
        let publishing = tokio::spawn(async move {
            for publisher in publishers {
                publisher.await.unwrap();
            }
        });
        let mut instances = self.instances.into_iter();
        drain(&self.checker, publishing, instances.next().unwrap()).await;
        for instance in instances {
            assert!(!instance.is_finished(), "a runner gave up");
            instance.stop().await;
        }
        for (run, times) in RUNS.iter().zip(&self.times) {
            println!(
                "publisher {run}: {} publishes took longer than the ack timeout, the slowest {} ms",
                times.slow.load(Ordering::SeqCst),
                times.slowest_ms.load(Ordering::SeqCst)
            );
        }
        read_back(&self.clients[0], &self.stream, &self.checker).await;
        self.checker.report()
    }
}

/// The node a cycle's fault hits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Leader,
    Follower,
}

/// Cycle `n` hits the leader when `n` is even, a follower when it is odd.
pub fn target_of(cycle: usize) -> Target {
    if cycle.is_multiple_of(2) {
        Target::Leader
    } else {
        Target::Follower
    }
}

/// One fault cycle: the node it hits and the stream leader before it.
pub struct Cycle {
    pub number: usize,
    pub target: Target,
    pub leader: usize,
    /// The node the fault hits.
    pub node: usize,
    /// The two others: the majority, which must keep taking writes.
    pub others: Vec<usize>,
    started: Instant,
    acked_before: usize,
}

impl ClusterRun {
    /// Starts cycle `number`: finds the stream leader and the node to hit.
    /// The test applies its fault to [`Cycle::node`] next.
    pub async fn cycle(&self, cluster: &NatsCluster, number: usize) -> Cycle {
        let target = target_of(number);
        let leader = cluster.stream_leader(&self.stream).await.unwrap();
        let node = match target {
            Target::Leader => leader,
            Target::Follower => (leader + 1) % NODES,
        };
        Cycle {
            number,
            target,
            leader,
            node,
            others: (0..NODES).filter(|i| *i != node).collect(),
            started: Instant::now(),
            acked_before: self.checker.acked_count(),
        }
    }

    /// While the fault lasts: waits for a stream leader among the other
    /// nodes and for [`ACKS_DURING_FAULT`] acks; returns that leader. The
    /// test ends its fault next.
    pub async fn during(&self, cluster: &NatsCluster, cycle: &Cycle) -> usize {
        let leader = cluster
            .wait_for_stream_leader_among(&self.stream, &cycle.others)
            .await
            .unwrap();
        let elected_after = cycle.started.elapsed();
        eventually(
            "the other nodes ack writes",
            Duration::from_secs(60),
            || async { self.checker.acked_count() >= cycle.acked_before + ACKS_DURING_FAULT },
        )
        .await;
        println!(
            "cycle {}: n{} ({:?}) hit; leader n{} -> n{} after {elected_after:?}; {ACKS_DURING_FAULT} acks after {:?}",
            cycle.number,
            cycle.node + 1,
            cycle.target,
            cycle.leader + 1,
            leader + 1,
            cycle.started.elapsed()
        );
        leader
    }

    /// Once the fault ended: waits until the cluster is ready and the
    /// stream's replicas current again.
    pub async fn recovered(&self, cluster: &NatsCluster, cycle: &Cycle) {
        wait_healed(cluster).await;
        eventually("all replicas current", HEAL_LIMIT, || async {
            replicas_current(&self.clients[cycle.others[0]], &self.stream).await
        })
        .await;
        println!(
            "cycle {}: ready and current after {:?}",
            cycle.number,
            cycle.started.elapsed()
        );
    }
}

/// Waits for a healed (or resumed) cluster to be ready again, longer than
/// the harness's own 30 s wait (see [`HEAL_LIMIT`]).
pub async fn wait_healed(cluster: &NatsCluster) {
    let deadline = Instant::now() + HEAL_LIMIT;
    loop {
        match cluster.wait_for_cluster_ready().await {
            Ok(()) => return,
            Err(err) if Instant::now() >= deadline => {
                panic!("the cluster did not heal in {HEAL_LIMIT:?}: {err}")
            }
            Err(_) => {}
        }
    }
}
