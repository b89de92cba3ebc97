//! `Publisher::ingest` against a real nats-server: fast-ingest batches on a
//! stream that allows them (order, every event stored once), the fallback
//! on a stream that does not, a refusal in the middle of a batch, and a
//! server SIGKILLed in the middle of an ingest (own server); events of
//! two streams, or of none, refused before anything is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy};
use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::provision::StreamSpec;
use jetevents::publish::{IngestPath, Ingested, PublishErrorKind};
use jetevents_testcontainers::NatsServer;

mod checker;
mod support;
use checker::{eventually, op, read_back, scaled, Bounds, Checker, Op};
use support::{connect, shared_server, unique};

/// The ids of the events stored in `stream`, in stream order.
async fn stored_ids(client: &Client, stream: &str) -> Vec<String> {
    let handle = client
        .jetstream()
        .unwrap()
        .get_stream(stream)
        .await
        .unwrap();
    let total = handle.cached_info().state.messages as usize;
    let consumer = handle
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut ids = Vec::with_capacity(total);
    while ids.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream ran dry before its message count")
            .unwrap()
            .unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("Nats-Msg-Id"))
            .map(|id| id.as_str().to_owned())
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn client_and_stream(allow_batch_publish: bool) -> (Client, String) {
    let server = shared_server().await;
    let env = unique("env");
    let client = connect(&server.url(), &env, |_| {}).await;
    let stream = unique("INGEST");
    let spec = StreamSpec::new(&stream, vec![format!("{env}.chaos.>")])
        .allow_batch_publish(allow_batch_publish);
    client.ensure_stream(&spec).await.unwrap();
    (client, stream)
}

fn ids_of(results: &[Result<Ingested, jetevents::publish::PublishError>]) -> Vec<String> {
    results
        .iter()
        .map(|result| result.as_ref().unwrap().event_id().to_owned())
        .collect()
}

#[tokio::test]
async fn ingest_goes_through_fast_batches_in_input_order() {
    let (client, stream) = client_and_stream(true).await;
    let events: Vec<Op> = (0..3_000).map(|n| op("fast", n, 100)).collect();

    let report = client.publisher().ingest(&events).await;

    assert_eq!(report.path, IngestPath::FastBatch);
    assert_eq!(report.results.len(), events.len());
    assert!(
        report
            .results
            .iter()
            .all(|result| matches!(result, Ok(Ingested::InBatch { .. }))),
        "every event confirmed in a batch"
    );
    // Stored once each, in input order.
    assert_eq!(stored_ids(&client, &stream).await, ids_of(&report.results));
}

#[tokio::test]
async fn ingest_falls_back_to_pipelined_publishing_without_the_stream_flag() {
    let (client, stream) = client_and_stream(false).await;
    let events: Vec<Op> = (0..500).map(|n| op("plain", n, 100)).collect();

    let report = client.publisher().ingest(&events).await;

    assert!(
        matches!(report.path, IngestPath::Pipelined { .. }),
        "{:?}",
        report.path
    );
    for (n, result) in report.results.iter().enumerate() {
        match result {
            Ok(Ingested::Stored(receipt)) => assert_eq!(receipt.sequence, n as u64 + 1),
            other => panic!("event {n}: {other:?}"),
        }
    }
    assert_eq!(stored_ids(&client, &stream).await, ids_of(&report.results));
}

#[tokio::test]
async fn enabling_batch_publish_on_an_existing_stream_updates_it() {
    let (client, stream) = client_and_stream(false).await;
    let env = client.config().env.clone();
    let spec = StreamSpec::new(&stream, vec![format!("{env}.chaos.>")]).allow_batch_publish(true);
    let report = client.ensure_stream(&spec).await.unwrap();
    assert_eq!(report.updated, vec!["allow_batch_publish"]);
    let events: Vec<Op> = (0..10).map(|n| op("enabled", n, 10)).collect();
    assert_eq!(
        client.publisher().ingest(&events).await.path,
        IngestPath::FastBatch
    );
}

/// One key per event except one: with one message per subject and
/// "discard new" per subject, the stream refuses that event in the middle
/// of a batch. It alone fails; the events after it, which the server did
/// not take, go in a new batch, so the stream holds the others in order.
/// With 300 events all are usually sent before the refusal comes back (the
/// batch's end hands them back); with 5,000 the window makes the sender
/// wait for acks, and it meets the refusal while sending.
#[tokio::test]
async fn a_refusal_mid_batch_fails_that_event_alone() {
    refusal_mid_batch(300).await;
    refusal_mid_batch(5_000).await;
}

async fn refusal_mid_batch(count: usize) {
    let server = shared_server().await;
    let env = unique("env");
    let client = connect(&server.url(), &env, |_| {}).await;
    let stream = unique("REFUSE");
    client
        .jetstream()
        .unwrap()
        .create_stream(StreamConfig {
            name: stream.clone(),
            subjects: vec![format!("{env}.bank.>")],
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            max_messages_per_subject: 1,
            allow_batch_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let refused_at = 120;
    let events: Vec<Account> = (0..count)
        .map(|n| Account {
            id: if n == refused_at { 7 } else { n },
        })
        .collect();

    let report = client.publisher().ingest(&events).await;

    assert_eq!(report.path, IngestPath::FastBatch);
    for (n, result) in report.results.iter().enumerate() {
        match result {
            Err(err) if n == refused_at => {
                assert_eq!(*err.kind(), PublishErrorKind::Rejected, "{err}");
            }
            Ok(_) if n != refused_at => {}
            other => panic!("{count} events, event {n}: {other:?}"),
        }
    }
    let expected: Vec<String> = report
        .results
        .iter()
        .filter_map(|result| result.as_ref().ok().map(|ok| ok.event_id().to_owned()))
        .collect();
    assert_eq!(stored_ids(&client, &stream).await, expected);
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Account {
    id: usize,
}

impl jetevents::Event for Account {
    const TYPE: &'static str = "bank.account.opened.v1";
    fn key(&self) -> Option<String> {
        Some(format!("a{}", self.id))
    }
}

/// nats-server SIGKILLed while ingests run, restarted on the same store,
/// several cycles: every event ingest reports stored is in the stream, none
/// twice, and unknown outcomes are bounded by what was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_loses_no_confirmed_event() {
    let cycles = scaled(3);
    let per_cycle = 20_000;
    let stream = "INGESTKILL";
    let mut server = NatsServer::builder().start().await.unwrap();
    let client = connect(&server.url(), "dev", |config| {
        config.ack_timeout = Duration::from_secs(1);
        config.publish_retry.max_attempts = 15;
        config.publish_retry.max_delay = Duration::from_secs(1);
    })
    .await;
    let spec = StreamSpec::new(stream, vec!["dev.chaos.>".into()]).allow_batch_publish(true);
    client.ensure_stream(&spec).await.unwrap();
    let stored = |client: Client| async move {
        match client.jetstream().unwrap().get_stream(stream).await {
            Ok(mut handle) => handle.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    };

    let checker = Checker::publish_only("sigkill-ingest");
    let mut killed_mid_ingest = 0;
    for cycle in 0..cycles {
        let before = stored(client.clone()).await;
        let events: Vec<Op> = (0..per_cycle)
            .map(|n| op("ingest", cycle * per_cycle + n, 200))
            .collect();
        let publisher = client.publisher();
        let task = tokio::spawn({
            let events = events.clone();
            async move { publisher.ingest(&events).await }
        });
        eventually(
            "a tenth of the cycle stored",
            Duration::from_secs(60),
            || {
                let client = client.clone();
                async move { stored(client).await >= before + (per_cycle / 10) as u64 }
            },
        )
        .await;
        server.kill().await.unwrap();
        server.restart().await.unwrap();
        let after_restart = stored(client.clone()).await;
        if after_restart < before + per_cycle as u64 {
            killed_mid_ingest += 1;
        }
        let report = tokio::time::timeout(Duration::from_secs(180), task)
            .await
            .expect("ingest did not return after the restart")
            .unwrap();
        assert_eq!(report.results.len(), events.len());
        let mut ids = BTreeSet::new();
        for (event, result) in events.iter().zip(&report.results) {
            checker.record(&event.op, result);
            if let Ok(ingested) = result {
                assert!(
                    ids.insert(ingested.event_id().to_owned()),
                    "one id per event"
                );
            }
        }
        println!(
            "cycle {cycle}: {:?}; {} in batches, {} published again one by one, {} failed",
            report.path,
            report
                .results
                .iter()
                .filter(|r| matches!(r, Ok(Ingested::InBatch { .. })))
                .count(),
            report
                .results
                .iter()
                .filter(|r| matches!(r, Ok(Ingested::Stored(_))))
                .count(),
            report.results.iter().filter(|r| r.is_err()).count()
        );
    }
    read_back(&client, stream, &checker).await;
    let report = checker.report();
    assert!(killed_mid_ingest > 0, "no kill hit an ingest in flight");
    report
        .assert_holds(&Bounds {
            faults: format!("SIGKILL x{cycles} ({killed_mid_ingest} mid-ingest)"),
            extra_handlings: 0,
            // Only events unconfirmed at a kill can stay unknown: at most
            // two strides of 500 in flight, retried one by one with a
            // budget that outlasts a restart.
            unknown: 1_000 * cycles,
            refused: 0,
        })
        .assert_acked_at_least(per_cycle);
}

/// Account `n`'s subject in environment `env`.
fn account_subject(env: &str, n: usize) -> String {
    format!("{env}.bank.account.opened.v1.a{n}")
}

/// A stream capturing exactly the subjects of accounts `ids`.
async fn accounts_stream(
    client: &Client,
    ids: std::ops::Range<usize>,
    allow_batch_publish: bool,
) -> String {
    let env = client.config().env.clone();
    let name = unique("ACCOUNTS");
    client
        .jetstream()
        .unwrap()
        .create_stream(StreamConfig {
            name: name.clone(),
            subjects: ids.map(|n| account_subject(&env, n)).collect(),
            allow_batch_publish,
            ..Default::default()
        })
        .await
        .unwrap();
    name
}

async fn message_count(client: &Client, stream: &str) -> u64 {
    let mut handle = client
        .jetstream()
        .unwrap()
        .get_stream(stream)
        .await
        .unwrap();
    handle.info().await.unwrap().state.messages
}

/// Every result of `report` is `expected`, and nothing was sent.
fn assert_not_sent(
    report: &jetevents::publish::IngestReport,
    events: usize,
    expected: &PublishErrorKind,
) {
    assert_eq!(report.path, IngestPath::NotSent);
    assert_eq!(report.results.len(), events);
    for (n, result) in report.results.iter().enumerate() {
        match result {
            Err(err) => assert_eq!(err.kind(), expected, "event {n}: {err}"),
            Ok(ok) => panic!("event {n} stored: {ok:?}"),
        }
    }
}

/// Events alternating between two streams, on the fast path (both allow
/// batch publish) and on the fallback path (neither does): refused as a
/// whole with a typed error naming both streams, nothing stored. Without
/// the check a batch met the second stream as a gap, and the rest of the
/// call went out one by one, out of input order.
#[tokio::test]
async fn ingest_refuses_events_of_two_streams_before_sending_any() {
    for allow_batch_publish in [true, false] {
        let server = shared_server().await;
        let env = unique("env");
        let client = connect(&server.url(), &env, |_| {}).await;
        let first = accounts_stream(&client, 0..10, allow_batch_publish).await;
        let second = accounts_stream(&client, 10..20, allow_batch_publish).await;
        let events: Vec<Account> = (0..200)
            .map(|n| Account {
                id: (n / 2) % 10 + if n % 2 == 0 { 0 } else { 10 },
            })
            .collect();

        let report = client.publisher().ingest(&events).await;

        assert_not_sent(
            &report,
            events.len(),
            &PublishErrorKind::NotOneStream {
                subject: account_subject(&env, 10),
                stream: Some(second.clone()),
                first_stream: Some(first.clone()),
            },
        );
        assert_eq!(message_count(&client, &first).await, 0);
        assert_eq!(message_count(&client, &second).await, 0);
    }
}

/// Some events captured by a stream, some by none, whichever comes
/// first, on both paths: refused as a whole, nothing stored.
#[tokio::test]
async fn ingest_refuses_events_some_of_which_no_stream_captures() {
    for allow_batch_publish in [true, false] {
        let server = shared_server().await;
        let env = unique("env");
        let client = connect(&server.url(), &env, |_| {}).await;
        let stream = accounts_stream(&client, 0..10, allow_batch_publish).await;
        let captured_first: Vec<Account> = (0..20).map(|id| Account { id }).collect();
        let report = client.publisher().ingest(&captured_first).await;
        assert_not_sent(
            &report,
            20,
            &PublishErrorKind::NotOneStream {
                subject: account_subject(&env, 10),
                stream: None,
                first_stream: Some(stream.clone()),
            },
        );
        let uncaptured_first: Vec<Account> = (0..20).map(|n| Account { id: 19 - n }).collect();
        let report = client.publisher().ingest(&uncaptured_first).await;
        assert_not_sent(
            &report,
            20,
            &PublishErrorKind::NotOneStream {
                subject: account_subject(&env, 9),
                stream: Some(stream.clone()),
                first_stream: None,
            },
        );
        assert_eq!(message_count(&client, &stream).await, 0);
    }
}

/// No stream at all: every event fails with its own `NoStream`, at once.
#[tokio::test]
async fn ingest_without_a_stream_fails_every_event_with_no_stream() {
    let server = shared_server().await;
    let env = unique("env");
    let client = connect(&server.url(), &env, |_| {}).await;
    let events: Vec<Account> = (0..5).map(|id| Account { id }).collect();

    let report = client.publisher().ingest(&events).await;

    assert_eq!(report.path, IngestPath::NotSent);
    for (n, result) in report.results.iter().enumerate() {
        match result {
            Err(err) => assert_eq!(
                *err.kind(),
                PublishErrorKind::NoStream {
                    subject: account_subject(&env, n)
                }
            ),
            Ok(ok) => panic!("event {n} stored: {ok:?}"),
        }
    }
}

/// The in-memory JetStream refuses the same calls: a service's unit tests
/// see what production does.
#[cfg(feature = "testing")]
#[tokio::test]
async fn ingest_on_the_in_memory_jetstream_refuses_events_of_two_streams() {
    let kit = jetevents::testing::TestKit::new();
    let client = kit.client();
    let env = client.config().env.clone();
    let first = StreamSpec::new("FIRST", (0..10).map(|n| account_subject(&env, n)).collect());
    let second = StreamSpec::new(
        "SECOND",
        (10..20).map(|n| account_subject(&env, n)).collect(),
    );
    client.ensure_stream(&first).await.unwrap();
    client.ensure_stream(&second).await.unwrap();
    let events: Vec<Account> = (0..20).map(|id| Account { id }).collect();

    let report = client.publisher().ingest(&events).await;

    assert_not_sent(
        &report,
        events.len(),
        &PublishErrorKind::NotOneStream {
            subject: account_subject(&env, 10),
            stream: Some("SECOND".to_owned()),
            first_stream: Some("FIRST".to_owned()),
        },
    );
    let one_stream: Vec<Account> = (0..10).map(|id| Account { id }).collect();
    let report = client.publisher().ingest(&one_stream).await;
    assert!(report.results.iter().all(Result::is_ok), "{report:?}");
}

/// An event whose key is optional: with and without one, its subjects
/// have two shapes, each looked up.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Note {
    key: Option<String>,
}

impl jetevents::Event for Note {
    const TYPE: &'static str = "bank.note.added.v1";
    fn key(&self) -> Option<String> {
        self.key.clone()
    }
}

/// A stream capturing the keyed notes only: a call with an unkeyed note
/// among keyed ones is refused, naming the unkeyed subject.
#[tokio::test]
async fn ingest_refuses_an_unkeyed_event_its_keyed_events_stream_does_not_capture() {
    let server = shared_server().await;
    let env = unique("env");
    let client = connect(&server.url(), &env, |_| {}).await;
    let unkeyed = format!("{env}.bank.note.added.v1");
    let stream = unique("NOTES");
    let spec = StreamSpec::new(&stream, vec![format!("{unkeyed}.*")]).allow_batch_publish(true);
    client.ensure_stream(&spec).await.unwrap();
    let note = |key: Option<&str>| Note {
        key: key.map(str::to_owned),
    };
    let events = vec![note(Some("n1")), note(None), note(Some("n2"))];

    let report = client.publisher().ingest(&events).await;

    assert_not_sent(
        &report,
        events.len(),
        &PublishErrorKind::NotOneStream {
            subject: unkeyed,
            stream: None,
            first_stream: Some(stream.clone()),
        },
    );
    assert_eq!(message_count(&client, &stream).await, 0);
    let keyed = vec![note(Some("n1")), note(Some("n2"))];
    assert_eq!(
        client.publisher().ingest(&keyed).await.path,
        IngestPath::FastBatch
    );
}
