//! Partitioned groups during a rolling deploy: an event of a type only the
//! newer version handles moves its partition to a newer member instead of
//! stalling it behind the older owner's Naks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::partitioned::PartitionedConsumer;
use jetevents::consume::{DeadLetterConfig, DeadLetters, HandlerError};
use serde::{Deserialize, Serialize};

mod checker;
mod partitioned_common;
mod support;
use checker::eventually;
use partitioned_common::{config, keyed, RunningMember};

/// Keys: enough that every partition holds some, whichever member owns it.
const KEYS: usize = 8;
const PARTITIONS: u16 = 2;

/// The type only the newer version handles, in the stream's domain.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Frozen {
    key: String,
    seq: u32,
}

impl jetevents::Event for Frozen {
    const TYPE: &'static str = "chaos.op.frozen.v1";
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// The newer version of [`Frozen`]: a newer member that takes `Frozen`
/// only through an upcast to it handles `Frozen` all the same.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FrozenV2 {
    key: String,
    seq: u32,
    reason: String,
}

impl jetevents::Event for FrozenV2 {
    const TYPE: &'static str = "chaos.op.frozen.v2";
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

/// How the newer version takes the type the older one does not handle.
#[derive(Clone, Copy, Debug)]
enum Newer {
    /// A handler of the type.
    Handles,
    /// A handler of the type's next version, and an upcast to it.
    Upcasts,
}

/// Who handled which event, in the order handled.
type Log = Arc<Mutex<Vec<(&'static str, String)>>>;

fn logged(log: &Log, member: &'static str) -> impl Fn(&str) + Clone + Send + Sync + 'static {
    let log = log.clone();
    move |op: &str| log.lock().unwrap().push((member, op.to_owned()))
}

/// Every event, per key, in the order handled, with its member.
fn per_key(log: &Log) -> BTreeMap<String, Vec<(&'static str, String)>> {
    let mut keys: BTreeMap<String, Vec<(&'static str, String)>> = BTreeMap::new();
    for (member, op) in log.lock().unwrap().iter() {
        let key = op.split('-').next().unwrap().to_owned();
        keys.entry(key).or_default().push((member, op.clone()));
    }
    keys
}

/// v1 handles the old type only; the group's filter already takes the new
/// type (a newer instance widened it earlier in the deploy), so its events
/// reach v1, which leaves them. Once v2 joins, each partition holding a
/// left event moves to v2: the event is handled there, then the key's next
/// one, in order, once each, nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_only_a_newer_member_handles_moves_its_partition_to_that_member() {
    a_newer_type_moves_its_partitions(Newer::Handles, false).await;
}

/// The same when the newer member takes the type only through an upcast:
/// its membership entry lists the upcast type as handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_a_newer_member_upcasts_moves_its_partition_to_that_member() {
    a_newer_type_moves_its_partitions(Newer::Upcasts, false).await;
}

/// Once moved, the partitions stay with v2 when the older member restarts
/// (under a new id, without the needs it recorded): v2 adopted them. The
/// restarted member would otherwise get its share back, older-type events
/// included, and stall there again at the next newer-type event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_partitions_stay_when_the_older_member_restarts() {
    a_newer_type_moves_its_partitions(Newer::Handles, true).await;
}

/// `older_restarts`: after the move, v1 restarts and every key gets one more
/// event (seq 3), which v2 must handle.
async fn a_newer_type_moves_its_partitions(newer: Newer, older_restarts: bool) {
    let server = support::shared_server().await;
    let env = support::unique("pcgdeploy");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGDEPLOY");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let log: Log = Arc::default();

    let older = partitioned_common::member_builder(&client, &stream, 0, logged(&log, "v1"))
        .filter_subject(format!("{env}.chaos.op.frozen.v1.*"));
    let older = RunningMember::start(
        PartitionedConsumer::build(older, config(PARTITIONS))
            .await
            .unwrap(),
    );
    // Rounds: every key's first event, then the new type, then the next:
    // v1 handles every first event before it meets the new type.
    let publisher = client.publisher();
    let firsts: Vec<_> = (0..KEYS).map(|key| keyed(key, 0)).collect();
    let frozen: Vec<_> = (0..KEYS)
        .map(|key| Frozen {
            key: format!("k{key}"),
            seq: 1,
        })
        .collect();
    let seconds: Vec<_> = (0..KEYS).map(|key| keyed(key, 2)).collect();
    for result in publisher.publish_many(&firsts, 64).await {
        result.unwrap();
    }
    for result in publisher.publish_many(&frozen, 64).await {
        result.unwrap();
    }
    for result in publisher.publish_many(&seconds, 64).await {
        result.unwrap();
    }
    eventually(
        "v1 handled every first event",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            async move { log.lock().unwrap().len() >= KEYS }
        },
    )
    .await;

    let newer_log = logged(&log, "v2");
    let builder = partitioned_common::member_builder(&client, &stream, 0, newer_log.clone());
    let newer = match newer {
        Newer::Handles => {
            builder.handle(move |event: Frozen, _ctx: jetevents::consume::Context| {
                let handled = newer_log.clone();
                async move {
                    handled(&format!("{}-{}", event.key, event.seq));
                    Ok::<_, HandlerError>(())
                }
            })
        }
        Newer::Upcasts => builder
            .handle(move |event: FrozenV2, _ctx: jetevents::consume::Context| {
                let handled = newer_log.clone();
                async move {
                    handled(&format!("{}-{}", event.key, event.seq));
                    Ok::<_, HandlerError>(())
                }
            })
            .upcast(|old: Frozen| FrozenV2 {
                key: old.key,
                seq: old.seq,
                reason: "upcast".to_owned(),
            }),
    };
    let newer = RunningMember::start(
        PartitionedConsumer::build(newer, config(PARTITIONS))
            .await
            .unwrap(),
    );
    // Well under the server's max_deliver path (about 8 min of Naks): without
    // the move, a partition v1 keeps stalls here.
    eventually("every event handled", Duration::from_secs(60), || {
        let log = log.clone();
        async move { log.lock().unwrap().len() >= 3 * KEYS }
    })
    .await;
    let mut rounds = 3;
    let older = if older_restarts {
        // A heartbeat (a third of the 3 s TTL) for v2 to adopt the needs,
        // one more to write them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        older.stop().await;
        let again = partitioned_common::member_builder(&client, &stream, 0, logged(&log, "v1b"))
            .filter_subject(format!("{env}.chaos.op.frozen.v1.*"));
        let again = RunningMember::start(
            PartitionedConsumer::build(again, config(PARTITIONS))
                .await
                .unwrap(),
        );
        // Joined and rebalanced: a few of its heartbeats.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let fourths: Vec<_> = (0..KEYS).map(|key| keyed(key, 3)).collect();
        for result in publisher.publish_many(&fourths, 64).await {
            result.unwrap();
        }
        rounds = 4;
        eventually(
            "every fourth event handled",
            Duration::from_secs(60),
            || {
                let log = log.clone();
                async move { log.lock().unwrap().len() >= 4 * KEYS }
            },
        )
        .await;
        again
    } else {
        older
    };
    newer.stop().await;
    older.stop().await;

    let keys = per_key(&log);
    assert_eq!(keys.len(), KEYS, "{keys:?}");
    for (key, handled) in &keys {
        let ops: Vec<&str> = handled.iter().map(|(_, op)| op.as_str()).collect();
        let expected: Vec<String> = (0..rounds).map(|seq| format!("{key}-{seq}")).collect();
        assert_eq!(ops, expected, "{key}: {handled:?}");
        assert_eq!(handled[0].0, "v1", "{key}: {handled:?}");
        assert_eq!(handled[1].0, "v2", "{key}: {handled:?}");
        if older_restarts {
            assert_eq!(handled[3].0, "v2", "{key}: {handled:?}");
        }
    }
    let dead_letters = DeadLetters::with_config(
        &client,
        DeadLetterConfig::new(
            format!("{stream}_DL"),
            format!("dl{}", stream.to_ascii_lowercase()),
        ),
    );
    let dead = dead_letters.list(50).await.unwrap();
    assert!(dead.is_empty(), "{dead:?}");
}
