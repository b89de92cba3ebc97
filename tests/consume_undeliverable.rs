//! The max-deliveries advisory watcher of the durable runner: an advisory
//! for a stored event dead-letters it `undeliverable` (its readable header
//! block carried whole, so a redrive restores it), one for a message gone
//! from the stream is logged and skipped, and where the user may not
//! subscribe to advisories the consumer and the publishers on the same
//! connection carry on, with one warning. (Messages the client cannot
//! receive are in `tests/badinput_consume.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;
use std::time::Duration;

use jetevents::client::Operation;
use jetevents::config::{Auth, Secret};
use jetevents_testcontainers::{NatsServer, Permissions};

mod checker;
mod support;
use checker::{chaos_stream, consumer, eventually, op, Checker, Running};
use jetevents::consume::DeadLetterReason;

const DENIED_WARNING: &str = "not allowed to subscribe to max-deliveries advisories";

/// The logs of every test in this binary (global: the watcher logs from its
/// own task). Tests search them for their own group or stream.
fn logs() -> &'static support::LogCapture {
    static CAPTURE: OnceLock<support::LogCapture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let captured = support::LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_dead_letters_the_stored_event_or_skips_a_deleted_one() {
    let captured = logs();
    let server = support::shared_server().await;
    let env = support::unique("adv");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("ADV");
    chaos_stream(&client, &stream, 1).await;
    let checker = Checker::new("advisory");
    let group = "crashy";
    let running = Running::start(
        consumer(&client, group, &stream, &checker, Duration::ZERO)
            .pull_expiry(Duration::from_millis(500))
            .build()
            .await
            .unwrap(),
    );
    let event = op("stored", 0, 10);
    let receipt = client.publisher().publish(&event).await.unwrap();
    checker.acked(&event.op);
    eventually("the event handled", Duration::from_secs(30), || async {
        checker.is_handled(&event.op)
    })
    .await;

    // What the server sends when it gives up on an event (as after a
    // handler that takes its process down on every attempt): first for a
    // sequence the stream does not have, then for the stored event.
    let advisory = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{group}");
    for (sequence, deliveries) in [(999_999u64, 4u64), (receipt.sequence, 4)] {
        let body = serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": stream,
            "consumer": group,
            "stream_seq": sequence,
            "deliveries": deliveries,
        });
        client
            .nats()
            .unwrap()
            .publish(advisory.clone(), serde_json::to_vec(&body).unwrap().into())
            .await
            .unwrap();
    }
    client.nats().unwrap().flush().await.unwrap();

    let dead_letters = jetevents::consume::DeadLetters::with_config(
        &client,
        jetevents::consume::DeadLetterConfig::new(
            format!("{stream}_DL"),
            format!("dl{}", stream.to_ascii_lowercase()),
        ),
    );
    let entries = support::dead_lettered(
        "the stored event dead-lettered",
        &dead_letters,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(entries.len(), 1, "only the stored event is dead-lettered");
    let entry = &entries[0];
    assert_eq!(entry.reason, DeadLetterReason::Undeliverable);
    assert_eq!(entry.original_sequence, receipt.sequence);
    assert_eq!(entry.delivery_count, 4);
    assert_eq!(entry.consumer, group);
    assert!(entry.error.contains("max deliveries"), "{}", entry.error);
    // A readable block travels whole as headers: the event decodes.
    let envelope = entry.envelope().unwrap();
    assert_eq!(envelope.id.as_str(), receipt.event_id);
    let events = client
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap();
    let original = events.get_raw_message(receipt.sequence).await.unwrap();
    assert_eq!(entry.payload, original.payload);
    assert!(entry.original_header_block.is_some());

    // The message gone from the stream was logged and skipped (advisories
    // are handled in order, so its log line is there by now).
    let gone = captured.contents().lines().any(|line| {
        line.contains("no longer in the stream")
            && line.contains("sequence=999999")
            && line.contains(&stream)
    });
    assert!(gone, "no log line for the deleted message");

    // A redrive restores the original headers.
    let redriven = dead_letters.redrive(entry.sequence).await.unwrap();
    let again = events.get_raw_message(redriven.sequence).await.unwrap();
    for (name, values) in original.headers.iter() {
        let name: &str = name.as_ref();
        if name.eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        let restored: Vec<&str> = again.headers.get_all(name).map(|v| v.as_str()).collect();
        let stored: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
        assert_eq!(restored, stored, "header {name} not restored");
    }
    assert_eq!(again.payload, original.payload);
    assert!(!running.is_finished(), "the runner stopped");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_advisory_subscription_fails_neither_the_consumer_nor_publishers() {
    let captured = logs();

    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: "svc-pw".into(),
            permissions: Some(Permissions {
                publish_allow: vec![
                    "dev.chaos.>".into(),
                    "dlchaos.>".into(),
                    "$JS.API.>".into(),
                    "$JS.ACK.>".into(),
                    "_INBOX.>".into(),
                ],
                // No `$JS.EVENT.>`.
                subscribe_allow: vec!["_INBOX.>".into()],
            }),
        })
        .start()
        .await
        .unwrap();
    let client = support::connect(&server.url(), "dev", |config| {
        config.auth = Auth::UserPassword {
            user: "svc".into(),
            password: Secret::new("svc-pw"),
        };
    })
    .await;
    chaos_stream(&client, "CHAOS", 1).await;
    let checker = Checker::new("advisory-denied");
    let mut violations = client.permission_violations();
    let running = Running::start(
        consumer(&client, "auditors", "CHAOS", &checker, Duration::ZERO)
            .pull_expiry(Duration::from_millis(500))
            .build()
            .await
            .unwrap(),
    );

    // The refusal happened (else this test proves nothing)...
    let advisory = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.CHAOS.auditors";
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let violation = violations.recv().await.unwrap();
            if violation.operation == Operation::Subscribe && violation.subject == advisory {
                break;
            }
        }
    })
    .await
    .expect("the advisory subscription was not refused");

    // ... and publishing and consuming go on.
    let publisher = client.publisher();
    for n in 0..3 {
        let event = op("after-refusal", n, 10);
        let result = publisher.publish(&event).await;
        assert!(result.is_ok(), "publish failed: {result:?}");
        checker.record(&event.op, &result);
    }
    eventually("every event handled", Duration::from_secs(60), || async {
        checker.all_acked_handled()
    })
    .await;
    eventually("the refusal logged", Duration::from_secs(10), || async {
        captured.contents().contains(DENIED_WARNING)
    })
    .await;
    assert!(!running.is_finished(), "the runner stopped");
    running.stop().await;
    assert_eq!(
        captured.contents().matches(DENIED_WARNING).count(),
        1,
        "warned more than once"
    );
    checker
        .report()
        .assert_no_loss()
        .assert_no_duplicates()
        .assert_all_acked();
}
