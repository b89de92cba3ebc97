//! Partitioned groups on one server: events of a key are handled in publish
//! order and never two at a time while members are SIGKILLed and added and
//! handlers fail at random; a failing event holds its partition back until
//! it is dead-lettered, with the events it held recorded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::partitioned::{PartitionedConsumer, MEMBER_ATTRIBUTE};
use jetevents::consume::{
    Consumer, Context, DeadLetterConfig, DeadLetters, HandlerError, RetryPolicy,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

mod checker;
mod metrics_reader;
mod partitioned_common;
mod support;
use checker::{eventually, scaled};
use partitioned_common::{config, keyed, Keyed, RunningMember, Scenario};

const KEYS: usize = 200;
/// Events per key, per unit of `JETEVENTS_FAULT_SCALE`.
const PER_KEY: u32 = 50;
const PARTITIONS: u16 = 8;

/// A member of the group. Runs only when re-executed by the parent test.
#[tokio::test]
#[ignore = "run as a child process by another test"]
async fn child_member() {
    partitioned_common::child_member().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_keep_publish_order_while_members_are_killed_and_added() {
    let server = support::shared_server().await;
    let env = support::unique("pcg");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCG");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let run = Scenario {
        name: "partitioned-members-killed",
        child_test: "child_member",
        urls: vec![server.url()],
        env,
        stream,
        partitions: PARTITIONS,
        keys: KEYS,
        per_key: scaled(PER_KEY as usize) as u32,
    };
    run.members_killed_and_added(&client, None).await;
}

/// Partition 0 of 1: every key in one partition, so what a failing event
/// holds back is plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_holds_its_partition_until_dead_lettered() {
    let server = support::shared_server().await;
    let env = support::unique("pcgdl");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGDL");
    partitioned_common::stream(&client, &stream, 1, 1).await;
    // Key 0's first event fails every time; five more events follow it.
    let events: Vec<Keyed> = (0..3)
        .map(|seq| keyed(0, seq))
        .chain((0..3).map(|seq| keyed(1, seq)))
        .collect();
    for result in client.publisher().publish_many(&events, 8).await {
        result.unwrap();
    }
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let dead_letters = DeadLetterConfig::new(
        format!("{stream}_DL"),
        format!("dl{}", stream.to_ascii_lowercase()),
    );
    let builder = Consumer::builder(&client, "ledger")
        .stream(&stream)
        .dead_letter(dead_letters.clone())
        .retry(RetryPolicy::fixed(Duration::from_millis(200)).max_attempts(3))
        .with_state(started.clone())
        .handle(
            |event: Keyed, ctx: Context<Arc<Mutex<Vec<String>>>>| async move {
                ctx.state().lock().unwrap().push(event.op.clone());
                if event.op == "k0-0" {
                    return Err(HandlerError::transient("downstream refuses k0-0"));
                }
                Ok(())
            },
        );
    let member = PartitionedConsumer::build(builder, config(1))
        .await
        .unwrap();
    let running = RunningMember::start(member);
    eventually("every event started", Duration::from_secs(60), || async {
        started.lock().unwrap().len() >= 8
    })
    .await;
    let dead = support::dead_lettered(
        "k0-0 dead-lettered",
        &DeadLetters::with_config(&client, dead_letters),
        Duration::from_secs(30),
    )
    .await;
    running.stop().await;

    // The three attempts of k0-0 come first: no later event overtook it.
    assert_eq!(
        *started.lock().unwrap(),
        ["k0-0", "k0-0", "k0-0", "k0-1", "k0-2", "k1-0", "k1-1", "k1-2"]
    );
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].original_subject.ends_with(".k0"), "{dead:?}");
    assert_eq!(dead[0].held_behind, Some(5), "{dead:?}");
}

/// Partitions owned, per member of group `ledger`, from the last export.
fn owned_per_member(recorder: &metrics_reader::Recorder) -> Vec<(String, u64)> {
    let totals = recorder.totals();
    let metrics = metrics_reader::Metrics(&totals);
    let Some(metric) = metrics.find("jetevents.consume.partitions.owned") else {
        return Vec::new();
    };
    let AggregatedMetrics::U64(MetricData::Gauge(gauge)) = metric.data() else {
        panic!("partitions.owned is not a u64 gauge: {:?}", metric.data());
    };
    let mut owned: Vec<(String, u64)> = gauge
        .data_points()
        .filter(|point| {
            point
                .attributes()
                .any(|kv| *kv == KeyValue::new("messaging.consumer.group.name", "ledger"))
        })
        .map(|point| {
            let member = point
                .attributes()
                .find(|kv| kv.key.as_str() == MEMBER_ATTRIBUTE)
                .map(|kv| kv.value.to_string())
                .unwrap();
            (member, point.value())
        })
        .collect();
    owned.sort();
    owned
}

/// Each member reports the partitions it owns and counts its rebalances:
/// one member owns all four, a second takes half, and when it leaves the
/// first owns all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_report_the_partitions_they_own_and_their_rebalances() {
    let server = support::shared_server().await;
    let env = support::unique("pcgmetrics");
    let recorder = metrics_reader::Recorder::new();
    let metered = |config: &mut jetevents::config::Config| config.meter = Some(recorder.meter());
    let first_client = support::connect(&server.url(), &env, metered).await;
    let second_client = support::connect(&server.url(), &env, metered).await;
    let stream = support::unique("PCGM");
    partitioned_common::stream(&first_client, &stream, 4, 1).await;
    let member = |client: &jetevents::client::Client| {
        let builder = partitioned_common::member_builder(client, &stream, 0, |_| {});
        PartitionedConsumer::build(builder, config(4))
    };
    let owned = |expected: &'static [u64]| {
        let recorder = &recorder;
        move || async move {
            let mut values: Vec<u64> = owned_per_member(recorder)
                .into_iter()
                .map(|(_, owned)| owned)
                .collect();
            values.sort_unstable();
            values == expected
        }
    };
    let first = RunningMember::start(member(&first_client).await.unwrap());
    // Made after the member recorded what it owns: the export has data.
    partition_consumer(&first_client, &stream, 0).await;
    eventually(
        "one member owns all 4",
        Duration::from_secs(30),
        owned(&[4]),
    )
    .await;

    let second = RunningMember::start(member(&second_client).await.unwrap());
    eventually(
        "two members own 2 each",
        Duration::from_secs(30),
        owned(&[2, 2]),
    )
    .await;
    let rebalances = {
        let totals = recorder.totals();
        metrics_reader::Metrics(&totals).sum_u64(
            "jetevents.consume.partitions.rebalances",
            &[KeyValue::new("messaging.consumer.group.name", "ledger")],
        )
    };
    // The first took 4 and gave 2 away; the second took 2.
    assert!(rebalances >= 3, "{rebalances} rebalances");

    second.stop().await;
    eventually(
        "the first owns all 4 again",
        Duration::from_secs(30),
        owned(&[0, 4]),
    )
    .await;
    first.stop().await;
}

/// A partition's consumer filters on the keyed subjects of its partition
/// only: one filter, so the server looks for the partition's next event
/// among that partition's subjects, not among every key of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_consumer_has_one_filter_per_handled_type() {
    let server = support::shared_server().await;
    let env = support::unique("pcgfilter");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGF");
    partitioned_common::stream(&client, &stream, 2, 1).await;
    let builder = partitioned_common::member_builder(&client, &stream, 0, |_| {});
    let member = RunningMember::start(
        PartitionedConsumer::build(builder, config(2))
            .await
            .unwrap(),
    );
    let config = partition_consumer(&client, &stream, 1).await;
    member.stop().await;
    assert!(
        config.filter_subjects.is_empty(),
        "{:?}",
        config.filter_subjects
    );
    assert_eq!(
        config.filter_subject,
        format!(
            "1.{env}.{}.*",
            <partitioned_common::Keyed as jetevents::Event>::TYPE
        )
    );
}

/// The configuration of the consumer of `partition`, once a member made it.
async fn partition_consumer(
    client: &jetevents::client::Client,
    stream: &str,
    partition: u16,
) -> async_nats::jetstream::consumer::Config {
    let jetstream = client.jetstream().unwrap();
    let name = format!("{}-p{partition}", partitioned_common::GROUP);
    let found = || async {
        let stream = jetstream.get_stream(stream).await.ok()?;
        let info = stream.consumer_info(&name).await.ok()?;
        Some(info.config.clone())
    };
    eventually(
        "the partition's consumer",
        Duration::from_secs(30),
        || async { found().await.is_some() },
    )
    .await;
    found().await.unwrap()
}

/// A group made by a version before keyed-only filters: its partition
/// consumers also filter on the type's unkeyed subject, which the stream
/// never holds. A member of this version, started on it, writes the keyed
/// filter alone (the unkeyed one matches nothing, so dropping it drops no
/// event) and handles every event stored meanwhile, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_member_drops_the_unkeyed_filter_of_an_older_version() {
    const PARTITIONS: u16 = 2;
    let server = support::shared_server().await;
    let env = support::unique("pcgupgrade");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("PCGU");
    partitioned_common::stream(&client, &stream, PARTITIONS, 1).await;
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let member = || {
        let handled = handled.clone();
        let builder = partitioned_common::member_builder(&client, &stream, 0, move |op| {
            handled.lock().unwrap().push(op.to_owned())
        });
        PartitionedConsumer::build(builder, config(PARTITIONS))
    };
    let event_type = <Keyed as jetevents::Event>::TYPE;
    // The older version's consumers: this version's settings, both filters
    // of the type under the partition's token.
    let first = RunningMember::start(member().await.unwrap());
    let mut consumers = Vec::new();
    for partition in 0..PARTITIONS {
        consumers.push(partition_consumer(&client, &stream, partition).await);
    }
    first.stop().await;
    let handle = client
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap();
    for (partition, mut old) in (0..PARTITIONS).zip(consumers) {
        old.filter_subject = String::new();
        old.filter_subjects = vec![
            format!("{partition}.{env}.{event_type}"),
            format!("{partition}.{env}.{event_type}.*"),
        ];
        handle.update_consumer(old).await.unwrap();
    }
    let events: Vec<Keyed> = (0..8)
        .flat_map(|key| (0..5).map(move |seq| keyed(key, seq)))
        .collect();
    for result in client.publisher().publish_many(&events, 64).await {
        result.unwrap();
    }

    let running = RunningMember::start(member().await.unwrap());
    eventually("every event handled", Duration::from_secs(60), || async {
        handled.lock().unwrap().len() >= events.len()
    })
    .await;
    for partition in 0..PARTITIONS {
        let upgraded = partition_consumer(&client, &stream, partition).await;
        assert_eq!(
            (upgraded.filter_subject, upgraded.filter_subjects),
            (format!("{partition}.{env}.{event_type}.*"), Vec::new()),
            "partition {partition}"
        );
    }
    running.stop().await;
    let mut handled = handled.lock().unwrap().clone();
    handled.sort();
    let mut expected: Vec<String> = events.iter().map(|event| event.op.clone()).collect();
    expected.sort();
    assert_eq!(handled, expected, "each event handled once");
}
