//! `tail`, `publish`, `dlq` and `groups` on real data, through the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use async_nats::HeaderMap;
use jetevents::consume::dead_letter as dl;
use support::{came_true, json_lines, World};

const CONFIRMED: &str = "booking.appointment.confirmed.v1";
const CANCELLED: &str = "booking.appointment.cancelled.v1";

#[tokio::test]
async fn tail_decodes_binary_and_structured_events_and_shows_undecodable_ones() {
    let world = World::new().await;
    world.publish(CONFIRMED, "a-1", r#"{"id":"a-1"}"#, &[]);
    world.publish(
        CANCELLED,
        "a-2",
        r#"{"id":"a-2"}"#,
        &["--encoding", "structured", "--correlation-id", "flow-7"],
    );
    // Not a CloudEvent: no ce- headers, not structured JSON.
    world
        .client
        .jetstream()
        .unwrap()
        .publish(format!("{}.garbage", world.env), "not an event".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let table = world.ok(&["tail", &world.stream]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().nth(1).unwrap().contains(CONFIRMED), "{table}");
    assert!(table.lines().nth(2).unwrap().contains(CANCELLED), "{table}");
    assert!(
        table.lines().nth(3).unwrap().contains("UNDECODABLE"),
        "{table}"
    );

    let events = json_lines(&world.ok(&["tail", &world.stream, "-o", "json"]));
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["type"], CONFIRMED);
    assert_eq!(events[0]["data"]["id"], "a-1");
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[1]["type"], CANCELLED);
    assert_eq!(events[1]["correlationid"], "flow-7");
    assert_eq!(events[2]["undecodable"], true);
    assert_eq!(events[2]["stream_sequence"], 3);
}

#[tokio::test]
async fn tail_filters_by_type_key_correlation_subject_and_start() {
    let world = World::new().await;
    world.publish(CONFIRMED, "a-1", "{}", &[]);
    world.publish(CANCELLED, "a-1", "{}", &["--correlation-id", "flow-7"]);
    world.publish(CONFIRMED, "a-2", "{}", &[]);

    let types = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["tail", world.stream.as_str(), "-o", "json"];
        all.extend_from_slice(args);
        json_lines(&world.ok(&all))
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["type"].as_str().unwrap(),
                    e["partitionkey"].as_str().unwrap()
                )
            })
            .collect()
    };
    let confirmed_a1 = format!("{CONFIRMED} a-1");
    let cancelled_a1 = format!("{CANCELLED} a-1");
    let confirmed_a2 = format!("{CONFIRMED} a-2");
    assert_eq!(
        types(&["--type", "*.confirmed.*"]),
        [confirmed_a1.as_str(), confirmed_a2.as_str()]
    );
    assert_eq!(
        types(&["--key", "a-1"]),
        [confirmed_a1.as_str(), cancelled_a1.as_str()]
    );
    assert_eq!(
        types(&["--correlation-id", "flow-7"]),
        [cancelled_a1.as_str()]
    );
    let cancelled_subject = format!("{}.{CANCELLED}.>", world.env);
    assert_eq!(
        types(&["--subject", &cancelled_subject]),
        [cancelled_a1.as_str()]
    );
    assert_eq!(
        types(&["--since-sequence", "2"]),
        [cancelled_a1.as_str(), confirmed_a2.as_str()]
    );
    assert_eq!(
        types(&["--since", "2000-01-01T00:00:00Z", "--limit", "1"]),
        [confirmed_a1.as_str()]
    );
    assert!(types(&["--since", "2100-01-01T00:00:00Z"]).is_empty());
}

#[tokio::test]
async fn tail_follow_waits_for_events_published_later() {
    let world = World::new().await;
    let child = world
        .command(&[
            "tail",
            &world.stream,
            "--follow",
            "--limit",
            "1",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The stream is empty: without --follow, tail would end with no output.
    world.publish(CONFIRMED, "later", "{}", &[]);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", support::text(&output.stderr));
    let events = json_lines(&support::text(&output.stdout));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["partitionkey"], "later");
}

#[tokio::test]
async fn publish_prints_the_receipt_and_reads_data_from_file_and_stdin() {
    let world = World::new().await;
    let receipt = world.publish(CONFIRMED, "a-1", r#"{"n": 1}"#, &["--id", "fixed-id"]);
    assert_eq!(receipt["stream"], world.stream.as_str());
    assert_eq!(receipt["sequence"], 1);
    assert_eq!(receipt["event_id"], "fixed-id");
    assert_eq!(receipt["subject"], format!("{}.{CONFIRMED}.a-1", world.env));
    assert_eq!(receipt["duplicate"], false);
    // The same id again: the server keeps the first.
    let again = world.publish(CONFIRMED, "a-1", r#"{"n": 1}"#, &["--id", "fixed-id"]);
    assert_eq!(again["duplicate"], true);

    let file = world.home.path().join("event.json");
    std::fs::write(&file, r#"{"n": 2}"#).unwrap();
    world.ok(&[
        "publish",
        "--type",
        CONFIRMED,
        "--file",
        file.to_str().unwrap(),
    ]);
    let table = world.ok_with_stdin(&["publish", "--type", CONFIRMED, "-"], r#"{"n": 3}"#);
    assert!(table.starts_with("STREAM"), "{table}");
    assert!(table.contains(&world.stream), "{table}");

    let events = json_lines(&world.ok(&["tail", &world.stream, "-o", "json"]));
    let data: Vec<_> = events
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [1, 2, 3]);
}

/// Writes a dead-letter entry as a consumer would: the event on its
/// original subject, with the dead-letter headers.
async fn dead_letter(world: &World, dlq: &str, consumer: &str, reason: &str, key: &str) {
    let subject = format!("{}.{CONFIRMED}.{key}", world.env);
    let mut envelope = jetevents::Envelope::new("/cli-tests", CONFIRMED);
    envelope.data = Some(format!(r#"{{"key":"{key}"}}"#).into());
    let (mut headers, payload): (HeaderMap, _) =
        jetevents::codec::encode(&envelope, jetevents::Encoding::Binary).unwrap();
    for (name, value) in [
        (dl::REASON, reason.to_owned()),
        (dl::ERROR, "boom".to_owned()),
        (dl::ORIGINAL_SUBJECT, subject.clone()),
        (dl::ORIGINAL_STREAM, world.stream.clone()),
        (dl::ORIGINAL_SEQUENCE, "1".to_owned()),
        (dl::CONSUMER, consumer.to_owned()),
        (dl::DELIVERIES, "3".to_owned()),
        (dl::TIME, chrono::Utc::now().to_rfc3339()),
    ] {
        headers.insert(name, value);
    }
    world
        .client
        .jetstream()
        .unwrap()
        .publish_with_headers(format!("{dlq}.{consumer}.{subject}"), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A dead-letter stream of the test's own, so tests do not see each other's.
async fn dead_letter_stream(world: &World) -> (String, String) {
    let (stream, prefix) = (support::unique("DL"), support::unique("dl"));
    jetevents::consume::DeadLetters::with_config(
        &world.client,
        jetevents::consume::DeadLetterConfig::new(stream.clone(), prefix.clone()),
    )
    .ensure_stream()
    .await
    .unwrap();
    (stream, prefix)
}

#[tokio::test]
async fn dlq_lists_filters_shows_and_deletes_entries() {
    let world = World::new().await;
    let (stream, prefix) = dead_letter_stream(&world).await;
    dead_letter(&world, &prefix, "billing", "permanent", "k1").await;
    dead_letter(&world, &prefix, "billing", "attempts_exhausted", "k2").await;
    dead_letter(&world, &prefix, "mailer", "permanent", "k3").await;
    let dlq = |args: &[&str]| {
        let mut all = vec![
            "dlq",
            "--dlq-stream",
            stream.as_str(),
            "--dlq-prefix",
            prefix.as_str(),
        ];
        all.extend_from_slice(args);
        world.ok(&all)
    };
    let sequences = |stdout: String| -> Vec<u64> {
        json_lines(&stdout)
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect()
    };

    let all = json_lines(&dlq(&["list", "-o", "json"]));
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["reason"], "permanent");
    assert_eq!(all[0]["consumer"], "billing");
    assert_eq!(all[0]["error"], "boom");
    assert_eq!(all[0]["event"]["type"], CONFIRMED);
    assert_eq!(
        sequences(dlq(&["list", "-o", "json", "--reason", "permanent"])),
        [1, 3]
    );
    assert_eq!(
        sequences(dlq(&["list", "-o", "json", "--consumer", "billing"])),
        [1, 2]
    );
    assert_eq!(
        sequences(dlq(&["list", "-o", "json", "--type", "*.cancelled.*"])),
        Vec::<u64>::new()
    );
    assert_eq!(
        sequences(dlq(&["list", "-o", "json", "--since", "1h"])),
        [1, 2, 3]
    );
    assert!(dlq(&["list"]).lines().nth(1).unwrap().contains("billing"));

    let shown = dlq(&["show", "2"]);
    assert!(
        shown.contains("attempts_exhausted") && shown.contains(r#"{"key":"k2"}"#),
        "{shown}"
    );

    assert_eq!(dlq(&["delete", "2"]).trim(), "deleted: 1, not found: 0");
    assert_eq!(
        dlq(&["delete", "--all", "--consumer", "mailer"]).trim(),
        "deleted: 1, not found: 0"
    );
    assert_eq!(sequences(dlq(&["list", "-o", "json"])), [1]);
}

#[tokio::test]
async fn dlq_redrive_interrupted_and_restarted_stores_each_event_once() {
    const ENTRIES: u64 = 300;
    let world = World::new().await;
    let (stream, prefix) = dead_letter_stream(&world).await;
    for n in 0..ENTRIES {
        dead_letter(
            &world,
            &prefix,
            "billing",
            "attempts_exhausted",
            &format!("k{n}"),
        )
        .await;
    }
    let args = [
        "dlq",
        "--dlq-stream",
        &stream,
        "--dlq-prefix",
        &prefix,
        "redrive",
        "--all",
    ];
    let mut first = world
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = came_true(Duration::from_secs(30), || async {
        world.stream_messages(&world.stream).await > 0
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(started, "the first redrive published nothing");
    let left_after_interruption = world.stream_messages(&stream).await;
    assert!(
        left_after_interruption > 0,
        "the first run finished before it was interrupted"
    );

    let summary = world.ok(&args);
    assert!(summary.starts_with("redriven: "), "{summary}");
    assert_eq!(world.stream_messages(&stream).await, 0);
    assert_eq!(world.stream_messages(&world.stream).await, ENTRIES);
    let keys: std::collections::BTreeSet<String> =
        json_lines(&world.ok(&["tail", &world.stream, "-o", "json"]))
            .iter()
            .map(|e| e["data"]["key"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(keys.len() as u64, ENTRIES);
}

#[tokio::test]
async fn groups_reports_backlog_and_verdicts() {
    let world = World::new().await;
    for key in ["a", "b", "c", "d", "e"] {
        world.publish(CONFIRMED, key, "{}", &[]);
    }
    let stream = world
        .client
        .jetstream()
        .unwrap()
        .get_stream(&world.stream)
        .await
        .unwrap();
    for (name, deliver_policy) in [
        (
            "backlog",
            async_nats::jetstream::consumer::DeliverPolicy::All,
        ),
        (
            "caught-up",
            async_nats::jetstream::consumer::DeliverPolicy::New,
        ),
    ] {
        stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                deliver_policy,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let groups = |args: &[&str]| -> Vec<(String, u64, String)> {
        let mut all = vec!["groups", world.stream.as_str(), "-o", "json"];
        all.extend_from_slice(args);
        json_lines(&world.ok(&all))
            .iter()
            .map(|g| {
                (
                    g["group"].as_str().unwrap().to_owned(),
                    g["pending"].as_u64().unwrap(),
                    g["verdict"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let group = |name: &str, pending, verdict: &str| (name.to_owned(), pending, verdict.to_owned());
    assert_eq!(
        groups(&["--lag-threshold", "3", "--stall-after", "1h"]),
        [
            group("backlog", 5, "lagging"),
            group("caught-up", 0, "healthy")
        ]
    );
    assert_eq!(
        groups(&["--lag-threshold", "10", "--stall-after", "1h"]),
        [
            group("backlog", 5, "healthy"),
            group("caught-up", 0, "healthy")
        ]
    );
    assert_eq!(
        groups(&["--stall-after", "0s"]),
        [
            group("backlog", 5, "stalled"),
            group("caught-up", 0, "healthy")
        ]
    );
    let table = world.ok(&["groups", &world.stream]);
    assert!(table.starts_with("STREAM"), "{table}");
    assert!(
        table.contains("backlog") && table.contains("caught-up"),
        "{table}"
    );
}
