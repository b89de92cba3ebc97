//! Publisher against a real nats-server: acks, dedup, optimistic concurrency,
//! size limit, permissions, missing streams, pipelining, secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use futures_util::StreamExt;
use jetevents::client::{Client, ConnectErrorKind};
use jetevents::codec::Encoding;
use jetevents::config::{Auth, Config, Secret};
use jetevents::envelope::Envelope;
use jetevents::provision::StreamSpec;
use jetevents::publish::{PublishErrorKind, PublishOptions};
use jetevents_testcontainers::NatsServer;
use serde::{Deserialize, Serialize};

mod support;
use support::{connect, shared_server, unique};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AccountOpened {
    account_id: String,
    owner: String,
    note: String,
}

impl jetevents::Event for AccountOpened {
    const TYPE: &'static str = "bank.account.opened.v1";
    fn key(&self) -> Option<String> {
        Some(self.account_id.clone())
    }
}

fn opened(id: &str) -> AccountOpened {
    AccountOpened {
        account_id: id.to_owned(),
        owner: "Ada Lovelace".to_owned(),
        note: String::new(),
    }
}

/// A client on the shared server with its own environment prefix and a stream
/// for the `bank` domain, so tests in this binary do not see each other.
async fn client_with_stream() -> (Client, String) {
    let server = shared_server().await;
    let env = unique("env");
    let client = connect(&server.url(), &env, |_| {}).await;
    let stream = unique("BANK");
    let spec = StreamSpec::for_domain(client.subjects(), &stream, "bank").unwrap();
    let report = client.ensure_stream(&spec).await.unwrap();
    assert!(report.created);
    (client, stream)
}

/// The event stored at `sequence`, and its `Nats-Msg-Id`.
async fn stored_event(client: &Client, stream: &str, sequence: u64) -> (Envelope, Option<String>) {
    let raw = client
        .jetstream()
        .unwrap()
        .get_stream(stream)
        .await
        .unwrap()
        .get_raw_message(sequence)
        .await
        .unwrap();
    let envelope = jetevents::codec::decode(Some(&raw.headers), &raw.payload).unwrap();
    let message_id = raw
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_owned());
    (envelope, message_id)
}

async fn stored_count(client: &Client, stream: &str) -> u64 {
    let mut stream = client
        .jetstream()
        .unwrap()
        .get_stream(stream)
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn publish_returns_a_receipt_and_the_event_reads_back() {
    let (client, stream) = client_with_stream().await;
    let event = opened("acc-1");
    let receipt = client.publisher().publish(&event).await.unwrap();
    assert_eq!(receipt.stream, stream);
    assert_eq!(receipt.sequence, 1);
    assert!(!receipt.duplicate);
    assert!(
        receipt.subject.ends_with(".bank.account.opened.v1.acc-1"),
        "{}",
        receipt.subject
    );

    let (envelope, message_id) = stored_event(&client, &stream, receipt.sequence).await;
    assert_eq!(envelope.id, receipt.event_id);
    assert_eq!(envelope.event_type, "bank.account.opened.v1");
    assert_eq!(envelope.partition_key(), Some("acc-1"));
    assert_eq!(envelope.decode_data::<AccountOpened>().unwrap(), event);
    assert_eq!(message_id, Some(receipt.event_id));
}

#[tokio::test]
async fn a_repeated_publish_is_stored_once_and_reported_duplicate() {
    let (client, stream) = client_with_stream().await;
    let publisher = client.publisher();
    let envelope = Envelope::from_event("/test", &opened("acc-dup")).unwrap();
    let subject = client.subjects().for_event(&opened("acc-dup")).unwrap();

    let first = publisher
        .publish_envelope(&subject, envelope.clone(), PublishOptions::new())
        .await
        .unwrap();
    let second = publisher
        .publish_envelope(&subject, envelope, PublishOptions::new())
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    assert_eq!(stored_count(&client, &stream).await, 1);
}

#[tokio::test]
async fn expected_subject_sequence_conflicts_carry_the_actual_sequence() {
    let (client, stream) = client_with_stream().await;
    let publisher = client.publisher();
    let first = publisher
        .publish_with(
            &opened("acc-occ"),
            PublishOptions::new().expected_last_subject_sequence(0),
        )
        .await
        .unwrap();
    let second = publisher
        .publish_with(
            &opened("acc-occ"),
            PublishOptions::new().expected_last_subject_sequence(first.sequence),
        )
        .await
        .unwrap();

    // A writer that read the state before `second` loses.
    let err = publisher
        .publish_with(
            &opened("acc-occ"),
            PublishOptions::new().expected_last_subject_sequence(first.sequence),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &PublishErrorKind::Conflict {
            expected: first.sequence,
            actual: Some(second.sequence)
        }
    );
    // Another subject (another key) is independent.
    publisher
        .publish_with(
            &opened("acc-other"),
            PublishOptions::new().expected_last_subject_sequence(0),
        )
        .await
        .unwrap();
    assert_eq!(stored_count(&client, &stream).await, 3);
}

#[tokio::test]
async fn an_oversized_event_is_refused_before_it_is_sent() {
    let (client, stream) = client_with_stream().await;
    let limit = client.nats().unwrap().max_payload();
    let mut event = opened("acc-big");
    event.note = "x".repeat(limit);
    let err = client.publisher().publish(&event).await.unwrap_err();
    match err.kind() {
        PublishErrorKind::PayloadTooLarge {
            size,
            limit: reported,
        } => {
            assert_eq!(*reported, limit);
            assert!(*size > limit);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(stored_count(&client, &stream).await, 0);

    // The connection is unharmed: the next publish works.
    client
        .publisher()
        .publish(&opened("acc-small"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_subject_without_stream_is_no_stream() {
    let server = shared_server().await;
    let client = connect(&server.url(), &unique("nostream"), |_| {}).await;
    let err = client
        .publisher()
        .publish(&opened("acc-x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), PublishErrorKind::NoStream { subject } if subject.ends_with("acc-x")),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_id_set_by_the_caller_is_the_event_id_and_stored_once() {
    let (client, stream) = client_with_stream().await;
    let publisher = client.publisher();
    // A space and a `%`: percent-encoded in `ce-id`, sent as they are in
    // `Nats-Msg-Id`; both read back as the id.
    let id = "acc-id opened 100%";
    let options = || PublishOptions::new().id(id);
    let first = publisher
        .publish_with(&opened("acc-id"), options())
        .await
        .unwrap();
    let second = publisher
        .publish_with(&opened("acc-id"), options())
        .await
        .unwrap();
    assert_eq!(first.event_id, id);
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.sequence, second.sequence);
    let (envelope, message_id) = stored_event(&client, &stream, first.sequence).await;
    assert_eq!(envelope.id, id);
    assert_eq!(message_id.as_deref(), Some(id));

    // The envelope paths take it too: structured mode, a ready envelope.
    let structured = publisher
        .publish_with(&opened("acc-id"), options().encoding(Encoding::Structured))
        .await
        .unwrap();
    let envelope = Envelope::from_event("/test", &opened("acc-id")).unwrap();
    let ready = publisher
        .publish_envelope(&first.subject, envelope, options())
        .await
        .unwrap();
    assert!(structured.duplicate && ready.duplicate);
    assert_eq!(ready.event_id, id);

    // Empty or with control characters: refused, nothing sent.
    for bad in ["", "line\nbreak", "tab\there", "nul\0"] {
        let err = publisher
            .publish_with(&opened("acc-bad-id"), PublishOptions::new().id(bad))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), &PublishErrorKind::InvalidEvent, "{bad:?}");
    }
    assert_eq!(stored_count(&client, &stream).await, 1);
}

#[tokio::test]
async fn an_error_names_the_event_id_to_publish_again_with() {
    let (client, stream) = client_with_stream().await;
    let publisher = client.publisher();
    publisher.publish(&opened("acc-again")).await.unwrap();
    let err = publisher
        .publish_with(
            &opened("acc-again"),
            PublishOptions::new().expected_last_subject_sequence(0),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), PublishErrorKind::Conflict { .. }),
        "{err:?}"
    );
    let id = err
        .event_id()
        .expect("the conflict names its event")
        .to_owned();

    // Sent again under that id, it is stored once.
    let again = publisher
        .publish_with(&opened("acc-again"), PublishOptions::new().id(&id))
        .await
        .unwrap();
    let repeated = publisher
        .publish_with(&opened("acc-again"), PublishOptions::new().id(&id))
        .await
        .unwrap();
    assert_eq!(again.event_id, id);
    assert!(!again.duplicate);
    assert!(repeated.duplicate);
    assert_eq!(stored_count(&client, &stream).await, 2);

    // A missing stream names the caller's id.
    let server = shared_server().await;
    let orphan = connect(&server.url(), &unique("nostream"), |_| {}).await;
    let err = orphan
        .publisher()
        .publish_with(&opened("acc-x"), PublishOptions::new().id("acc-x-opened"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), PublishErrorKind::NoStream { .. }),
        "{err:?}"
    );
    assert_eq!(err.event_id(), Some("acc-x-opened"));
}

#[tokio::test]
async fn hostile_keys_are_escaped_or_refused_before_the_server() {
    let (client, stream) = client_with_stream().await;
    let publisher = client.publisher();
    for key in [
        "a.>",
        "*",
        "with space",
        "semi;colon/slash",
        "alice@example.com",
        "ünï/cødé",
    ] {
        let receipt = publisher.publish(&opened(key)).await.unwrap();
        let tokens: Vec<&str> = receipt.subject.split('.').collect();
        assert_eq!(tokens.len(), 6, "{key:?} -> {}", receipt.subject);
        assert_eq!(
            jetevents::subject::unescape_key(tokens[5]).unwrap(),
            key,
            "key must round-trip"
        );
    }
    let err = publisher
        .publish(&opened(&"k".repeat(10_000)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &PublishErrorKind::InvalidSubject);
    // CloudEvents forbids control characters in attribute values, and the key
    // is also the `partitionkey` attribute: refused, not mangled.
    let err = publisher.publish(&opened("cr\r\nlf")).await.unwrap_err();
    assert_eq!(err.kind(), &PublishErrorKind::InvalidEvent);
    assert_eq!(stored_count(&client, &stream).await, 6);
}

#[tokio::test]
async fn pipelined_publish_stores_ten_thousand_events_once_in_order() {
    let (client, stream) = client_with_stream().await;
    let events: Vec<AccountOpened> = (0..10_000)
        .map(|n| opened(&format!("acc-{n:05}")))
        .collect();
    let results = client.publisher().publish_many(&events, 512).await;
    assert_eq!(results.len(), events.len());
    let receipts: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    for (n, receipt) in receipts.iter().enumerate() {
        assert_eq!(receipt.sequence, n as u64 + 1, "event {n} out of order");
        assert!(!receipt.duplicate);
    }
    assert_eq!(stored_count(&client, &stream).await, 10_000);

    // Read the stream back: every event once, in input order.
    let consumer = client
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for (n, receipt) in receipts.iter().enumerate() {
        let message = messages.next().await.unwrap().unwrap();
        let envelope =
            jetevents::codec::decode(message.headers.as_ref(), &message.payload).unwrap();
        assert_eq!(
            envelope.partition_key(),
            Some(format!("acc-{n:05}").as_str())
        );
        assert_eq!(envelope.id, receipt.event_id);
    }
}

#[tokio::test]
async fn provisioning_is_idempotent_and_reports_drift() {
    let server = shared_server().await;
    let client = connect(&server.url(), &unique("prov"), |_| {}).await;
    let name = unique("PROV");
    let spec = StreamSpec::for_domain(client.subjects(), &name, "bank").unwrap();
    assert!(client.ensure_stream(&spec).await.unwrap().created);
    let again = client.ensure_stream(&spec).await.unwrap();
    assert!(!again.created && again.updated.is_empty() && again.is_in_sync());

    let longer_window = spec.clone().duplicate_window(Duration::from_secs(600));
    let updated = client.ensure_stream(&longer_window).await.unwrap();
    assert_eq!(updated.updated, vec!["duplicate_window"]);

    let memory = longer_window.storage(StorageType::Memory);
    let drifted = client.ensure_stream(&memory).await.unwrap();
    assert!(!drifted.is_in_sync());
    assert_eq!(drifted.drift[0].field, "storage");
    let mut info = client.jetstream().unwrap().get_stream(&name).await.unwrap();
    assert_eq!(info.info().await.unwrap().config.storage, StorageType::File);
}

#[tokio::test]
async fn message_schedules_turn_on_in_place_and_turning_them_off_is_drift() {
    let server = shared_server().await;
    let client = connect(&server.url(), &unique("sched"), |_| {}).await;
    let name = unique("SCHED");
    let spec = StreamSpec::for_domain(client.subjects(), &name, "bank").unwrap();
    let allows_schedules = || async {
        let mut stream = client.jetstream().unwrap().get_stream(&name).await.unwrap();
        stream.info().await.unwrap().config.allow_message_schedules
    };
    client.ensure_stream(&spec).await.unwrap();
    assert!(!allows_schedules().await);

    let scheduling = spec.clone().allow_message_schedules(true);
    let turned_on = client.ensure_stream(&scheduling).await.unwrap();
    assert_eq!(turned_on.updated, vec!["allow_message_schedules"]);
    assert!(turned_on.is_in_sync());
    assert!(allows_schedules().await);
    let again = client.ensure_stream(&scheduling).await.unwrap();
    assert!(again.updated.is_empty() && again.is_in_sync());

    let without = client.ensure_stream(&spec).await.unwrap();
    assert!(without.updated.is_empty());
    assert_eq!(without.drift.len(), 1);
    assert_eq!(without.drift[0].field, "allow_message_schedules");
    assert!(allows_schedules().await, "the server keeps schedules on");
}

#[tokio::test]
async fn publish_outside_permissions_is_permission_denied() {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: "svc-password".into(),
            permissions: Some(jetevents_testcontainers::Permissions::publish_only([
                "dev.bank.account.opened.v1.allowed",
            ])),
        })
        .start()
        .await
        .unwrap();
    let client = connect(&server.url(), "dev", |config| {
        config.auth = Auth::UserPassword {
            user: "svc".into(),
            password: Secret::new("svc-password"),
        };
        // Long ack timeout: a denied publish must not wait for it.
        config.ack_timeout = Duration::from_secs(30);
        config.publish_retry.max_attempts = 1;
    })
    .await;
    let spec = StreamSpec::new("BANK", vec!["dev.bank.>".into()]);
    client.ensure_stream(&spec).await.unwrap();

    client
        .publisher()
        .publish(&opened("allowed"))
        .await
        .unwrap();
    let err = client
        .publisher()
        .publish(&opened("denied"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &PublishErrorKind::PermissionDenied {
            subject: "dev.bank.account.opened.v1.denied".into()
        }
    );
}

#[tokio::test]
async fn wrong_credentials_fail_fast_with_a_typed_error() {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Token("right-token".into()))
        .start()
        .await
        .unwrap();
    let config = Config::default()
        .with_servers([server.url()])
        .with_auth(Auth::Token(Secret::new("wrong-token")));
    let err = Client::connect(config).await.unwrap_err();
    assert_eq!(err.kind(), &ConnectErrorKind::AuthenticationFailed);

    let config = Config::default()
        .with_servers([server.url()])
        .with_auth(Auth::Token(Secret::new("right-token")));
    Client::connect(config).await.unwrap();
}
