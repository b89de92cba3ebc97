//! One member's side of the rebalancing protocol (see the [module](super)
//! docs): keep the membership alive, compute the partitions it owns, start
//! consuming those it gains and release those it gives away.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use opentelemetry::KeyValue;

use crate::consume::ConsumeError;
use crate::semconv::MESSAGING_CONSUMER_GROUP_NAME;

use super::assignment::owned_by;
use super::membership::Membership;
use super::needs::{self, Needs, UnhandledTypes};
use super::upgrade::drop_unkeyed_filters;
use super::PartitionedConsumer;

/// The metric attribute naming a member (its id in the membership bucket).
pub const MEMBER_ATTRIBUTE: &str = "jetevents.partitioned.member";

/// A partition this member consumes: its runner and how to stop it.
struct Owned {
    stop: oneshot::Sender<()>,
    runner: JoinHandle<Result<(), ConsumeError>>,
    /// The types its runner left unhandled since the last heartbeat.
    unhandled: UnhandledTypes,
}

pub(super) async fn run<S>(
    group: PartitionedConsumer<S>,
    mut membership: Membership,
    mut signal: BoxFuture<'static, ()>,
) where
    S: Clone + Send + Sync + 'static,
{
    let mut owned: BTreeMap<u16, Owned> = BTreeMap::new();
    let mut needs = Needs::new();
    let metrics = MemberMetrics::new(&group, membership.me());
    let mut heartbeat = tokio::time::interval(group.config.heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = &mut signal => break,
            _ = heartbeat.tick() => {}
        }
        for (partition, consuming) in &owned {
            needs::collect(&mut needs, *partition, &consuming.unhandled);
        }
        let entry = group.entry(needs.clone());
        // A runner ends by itself only when it cannot go on (its consumer
        // not attached, its stream gone): started again below if the
        // partition is still ours.
        let ended: Vec<u16> = owned
            .iter()
            .filter(|(_, partition)| partition.runner.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in &ended {
            if let Some(gone) = owned.remove(partition) {
                report_end(&group.group, *partition, gone.runner.await);
            }
        }
        let members = match membership.renew(&entry).await {
            Ok(members) => members,
            Err(err) => {
                // Keep what is owned: the pins and max_ack_pending 1 keep a
                // partition to one event at a time if others move meanwhile.
                tracing::warn!(consumer = %group.group, error = %err, "partitioned group heartbeat failed; keeping the current partitions");
                continue;
            }
        };
        let wanted = owned_by(&members, membership.me(), group.config.partitions);
        // Written with the next renewal.
        needs::adopt(
            &mut needs,
            members
                .iter()
                .filter(|(member, _)| *member != membership.me())
                .map(|(_, entry)| &entry.needs),
            &wanted,
        );
        let given_away: Vec<u16> = owned
            .keys()
            .filter(|partition| !wanted.contains(partition))
            .copied()
            .collect();
        if !given_away.is_empty() || wanted.iter().any(|p| !owned.contains_key(p)) {
            metrics.rebalanced();
            tracing::info!(
                consumer = %group.group,
                member = %membership.me(),
                members = members.len(),
                partitions = ?wanted,
                "partitioned group rebalanced"
            );
        }
        release(&group, &mut owned, &given_away).await;
        for partition in wanted {
            if owned.contains_key(&partition) {
                continue;
            }
            // Each partition attaches (several requests to the server) and
            // consumes in its own task: a member's partitions start at once
            // and run side by side, none waiting for another's round trips.
            let unhandled = UnhandledTypes::default();
            let consumer = group.partition(partition, unhandled.clone());
            // Checked when the partition is taken, not at each restart of
            // its runner (a server electing leaders answers slowly).
            let upgrade = (!ended.contains(&partition)).then(|| group.stream.clone());
            let (stop, stopped) = oneshot::channel::<()>();
            let runner = tokio::spawn(async move {
                if let Some(stream) = upgrade {
                    let upgraded = drop_unkeyed_filters(
                        &consumer.client,
                        &stream,
                        &consumer.group,
                        partition,
                        &consumer.filters,
                    )
                    .await;
                    if let Err(err) = upgraded {
                        // It still delivers every event, only slower.
                        tracing::warn!(consumer = %consumer.group, error = %err, "an older version's filters on the partition's consumer not dropped");
                    }
                }
                // A failure ends the task; the next heartbeat starts it again.
                consumer
                    .attach()
                    .await?
                    .run_until(async move {
                        let _ = stopped.await;
                    })
                    .await
            });
            owned.insert(
                partition,
                Owned {
                    stop,
                    runner,
                    unhandled,
                },
            );
        }
        metrics.owned(owned.len());
    }
    let all: Vec<u16> = owned.keys().copied().collect();
    release(&group, &mut owned, &all).await;
    metrics.owned(0);
    membership.leave().await;
}

/// The member's rebalancing metrics, with the group and member as attributes:
/// several members may share a process (and its meter).
struct MemberMetrics {
    metrics: crate::metrics::Metrics,
    attributes: [KeyValue; 2],
}

impl MemberMetrics {
    fn new(group: &PartitionedConsumer<impl Clone + Send + Sync + 'static>, me: &str) -> Self {
        Self {
            metrics: group.prepared.client.metrics().clone(),
            attributes: [
                KeyValue::new(MESSAGING_CONSUMER_GROUP_NAME, group.group.clone()),
                KeyValue::new(MEMBER_ATTRIBUTE, me.to_owned()),
            ],
        }
    }

    fn rebalanced(&self) {
        self.metrics.partition_rebalances.add(1, &self.attributes);
    }

    fn owned(&self, partitions: usize) {
        self.metrics
            .partitions_owned
            .record(partitions as u64, &self.attributes);
    }
}

/// Stops consuming `partitions`: each runner finishes its in-flight event
/// (acked, or Naked after the shutdown grace), then the pin is released so
/// the new owner is served at once instead of after the pinned TTL.
async fn release<S: Clone + Send + Sync + 'static>(
    group: &PartitionedConsumer<S>,
    owned: &mut BTreeMap<u16, Owned>,
    partitions: &[u16],
) {
    let mut stopping = Vec::new();
    for partition in partitions {
        if let Some(Owned { stop, runner, .. }) = owned.remove(partition) {
            let _ = stop.send(());
            stopping.push((*partition, runner));
        }
    }
    for (partition, runner) in stopping {
        report_end(&group.group, partition, runner.await);
        if let Err(err) = group.unpin(partition).await {
            // Not pinned (it never received), or the server is away: the
            // pin then lapses after the pinned TTL.
            tracing::debug!(consumer = %group.group, partition, error = %err, "partition not unpinned");
        }
    }
}

fn report_end(
    group: &str,
    partition: u16,
    ended: Result<Result<(), ConsumeError>, tokio::task::JoinError>,
) {
    match ended {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(consumer = %group, partition, error = %err, "partition consumer stopped")
        }
        Err(err) => {
            tracing::warn!(consumer = %group, partition, error = %err, "partition consumer task failed")
        }
    }
}

/// The names a partition's consumer is known by on the server.
pub(super) fn partition_group(group: &str, partition: u16) -> String {
    format!("{group}-p{partition}")
}
