//! The membership of a partitioned group on a real server: what a steady
//! heartbeat asks of the server, and that a member that dies is noticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::consume::partitioned::PartitionedConsumer;

mod checker;
mod partitioned_common;
mod support;
use checker::eventually;
use partitioned_common::{config, keyed, RunningMember, GROUP};

const PARTITIONS: u16 = 4;

/// The membership bucket of the tests' group on `stream`.
fn bucket(stream: &str) -> String {
    format!("jetevents-pcg-{}-{stream}-{GROUP}", stream.len())
}

/// Every message seen on `subjects`, with when it was seen.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

async fn spy(url: &str, subjects: &[String]) -> Seen {
    let client = async_nats::connect(url).await.unwrap();
    let seen: Seen = Arc::default();
    for subject in subjects {
        let mut messages = client.subscribe(subject.clone()).await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                seen.lock()
                    .unwrap()
                    .push((Instant::now(), message.subject.to_string()));
            }
        });
    }
    // async-nats' flush only writes the buffer; a request's reply proves the
    // server has read the subscriptions before it (it reads a connection's
    // operations in order), so nothing sent after `spy` returns is missed.
    client.request("$JS.API.INFO", "".into()).await.unwrap();
    // Kept open for the test's life (the tasks above read its subscriptions).
    std::mem::forget(client);
    seen
}

/// Once every member has joined, a heartbeat renews the member's own entry
/// and asks nothing else of the bucket: no consumer listing its keys, no
/// read of another member's entry (before, each heartbeat listed the keys
/// and read every other entry: n + 1 requests per member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_heartbeat_reads_no_other_members_entry() {
    const MEMBERS: usize = 3;
    let server = support::shared_server().await;
    let env = support::unique("pcgmember");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGMEMBER");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let bucket = bucket(&stream);
    let seen = spy(
        &server.url(),
        &["$JS.API.>".to_owned(), format!("$KV.{bucket}.>")],
    )
    .await;

    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let member = partitioned_common::member_builder(&client, &stream, 0, |_| {});
        members.push(RunningMember::start(
            PartitionedConsumer::build(member, config(PARTITIONS))
                .await
                .unwrap(),
        ));
    }
    let renewals = format!("$KV.{bucket}.");
    eventually(
        "every member renews its entry",
        Duration::from_secs(30),
        || {
            let seen = seen.clone();
            let renewals = renewals.clone();
            async move {
                let members: BTreeSet<String> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter_map(|(_, subject)| subject.strip_prefix(&renewals).map(str::to_owned))
                    .collect();
                members.len() == MEMBERS
            }
        },
    )
    .await;
    // A heartbeat is a third of the member TTL (3 s): each member's watch
    // is open after its first one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let to = Instant::now();
    for member in members {
        member.stop().await;
    }

    let window: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| (from..to).contains(at))
        .map(|(_, subject)| subject.clone())
        .collect();
    let puts = window.iter().filter(|s| s.starts_with(&renewals)).count();
    let bucket_requests: Vec<&String> = window
        .iter()
        .filter(|s| s.starts_with("$JS.API.") && s.contains(&format!("KV_{bucket}")))
        .collect();
    println!(
        "{MEMBERS} members, 4 s: {puts} renewals, {} other requests on the bucket: {bucket_requests:?}",
        bucket_requests.len()
    );
    // About four heartbeats each: the members were beating.
    assert!(puts >= MEMBERS * 3, "{puts} renewals: {window:?}");
    assert!(bucket_requests.is_empty(), "{bucket_requests:?}");
}

/// A member that dies (no release, no leave) is noticed once its entry
/// expires: the other takes its partitions and handles their events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_is_noticed_when_its_entry_expires() {
    const KEYS: usize = 8;
    let server = support::shared_server().await;
    let env = support::unique("pcgdies");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGDIES");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let log: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
    let logged = |member: &'static str| {
        let log = log.clone();
        move |op: &str| log.lock().unwrap().push((member, op.to_owned()))
    };
    let start = |member: &'static str| {
        let builder = partitioned_common::member_builder(&client, &stream, 0, logged(member));
        async move {
            RunningMember::start(
                PartitionedConsumer::build(builder, config(PARTITIONS))
                    .await
                    .unwrap(),
            )
        }
    };
    let dying = start("dying").await;
    let survivor = start("survivor").await;
    let publisher = client.publisher();
    let handled_by = |member: &'static str| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move { log.lock().unwrap().iter().any(|(by, _)| *by == member) }
        }
    };
    // Both own partitions: rounds of every key until each handled one.
    let mut round = 0;
    let started = Instant::now();
    while !(handled_by("dying")().await && handled_by("survivor")().await) {
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", log);
        let events: Vec<_> = (0..KEYS).map(|key| keyed(key, round)).collect();
        for result in publisher.publish_many(&events, 64).await {
            result.unwrap();
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eventually("the rounds handled", Duration::from_secs(30), || {
        let log = log.clone();
        async move { log.lock().unwrap().len() >= KEYS * round as usize }
    })
    .await;
    dying.abort();

    let last: Vec<_> = (0..KEYS).map(|key| keyed(key, round)).collect();
    for result in publisher.publish_many(&last, 64).await {
        result.unwrap();
    }
    let last_ops: BTreeSet<String> = last.iter().map(|event| event.op.clone()).collect();
    eventually(
        "the survivor handles every key's last event",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            let last_ops = last_ops.clone();
            async move {
                let log = log.lock().unwrap();
                last_ops
                    .iter()
                    .all(|op| log.iter().any(|(by, done)| *by == "survivor" && done == op))
            }
        },
    )
    .await;
    survivor.stop().await;
}
