//! Process pauses inside a 3-node cluster, Jepsen-style: an R3 stream, a
//! client on every node (each publishing one event at a time and running
//! one instance of the same consumer group), and cycle after cycle one node
//! is paused (SIGSTOP, or `docker pause`: the stream leader, then a
//! follower) while the two others must take writes, then resumed (SIGCONT)
//! and the cluster catches up. A paused leader wakes up believing it still
//! leads, with clients connected to it; at the end no acked event is lost,
//! nothing is unexpected or stored twice, and the duplicates stay within
//! what the pauses explain.
//!
//! Its own binary: it owns a cluster. `JETEVENTS_FAULT_SCALE` multiplies the
//! cycles (20 per unit; the events are as many as the publishers manage
//! meanwhile).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents_testcontainers::NatsCluster;

mod checker;
mod support;
use checker::cluster::{ClusterRun, Target, ACKS_DURING_FAULT, HELD, NODES};
use checker::{scale, Bounds};

const STREAM: &str = "PAUSED";
/// Pause/resume cycles per unit of `JETEVENTS_FAULT_SCALE`.
const CYCLES_PER_SCALE: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_of_leader_and_followers_lose_no_acked_event() {
    let cycles = CYCLES_PER_SCALE * scale();
    let cluster = NatsCluster::start().await.unwrap();
    let run = ClusterRun::start(&cluster, STREAM, "pause-leader-follower").await;

    let (mut leader_pauses, mut elections) = (0, 0);
    for number in 0..cycles {
        let cycle = run.cycle(&cluster, number).await;
        cluster.pause(cycle.node).await.unwrap();
        let leader_during = run.during(&cluster, &cycle).await;
        cluster.resume(cycle.node).await.unwrap();
        run.recovered(&cluster, &cycle).await;
        leader_pauses += usize::from(cycle.target == Target::Leader);
        elections += usize::from(leader_during != cycle.leader);
    }

    run.finish()
        .await
        .assert_holds(&Bounds {
            faults: format!(
                "SIGSTOP/SIGCONT x{cycles} ({leader_pauses} of the leader, {elections} elections)"
            ),
            // Per cycle and instance: the events it held unacked while its
            // node was stopped (or its acks went to a stopped leader), and
            // as many acks a stopped leader had taken but not replicated,
            // come back once more.
            extra_handlings: (cycles * NODES * 2 * HELD) as u64,
            // One publish at a time per node: at most the one in flight on
            // each at a pause can outlast its budget without an answer.
            unknown: cycles * NODES,
            refused: 0,
        })
        .assert_acked_at_least(cycles * ACKS_DURING_FAULT);
    // Every paused leader was replaced while it was stopped.
    assert_eq!(elections, leader_pauses);
}
