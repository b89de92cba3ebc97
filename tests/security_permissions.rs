//! Consuming outside a user's permissions. (Publishing outside them is
//! `tests/publish.rs`: a typed `PermissionDenied`.)
//!
//! The user may publish events and use the stream API, but not create
//! consumers (`$JS.API.CONSUMER.>`), and may subscribe only to inboxes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::client::{Client, Operation};
use jetevents::config::{Auth, Secret};
use jetevents::consume::{ConsumeErrorKind, Context, EphemeralConsumer, HandlerError};
use jetevents_testcontainers::{NatsServer, Permissions};

mod checker;
mod support;
use checker::{chaos_stream, consumer, Checker, Op};

async fn restricted() -> (NatsServer, Client) {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: "svc-pw".into(),
            permissions: Some(Permissions {
                publish_allow: vec![
                    "dev.chaos.>".into(),
                    "$JS.API.INFO".into(),
                    "$JS.API.STREAM.>".into(),
                    "$JS.ACK.>".into(),
                    "_INBOX.>".into(),
                ],
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
        // Long: a refusal must not wait for it.
        config.ack_timeout = Duration::from_secs(30);
    })
    .await;
    chaos_stream(&client, "CHAOS", 1).await;
    (server, client)
}

#[tokio::test]
async fn a_subscription_outside_permissions_is_reported_as_a_typed_violation() {
    let (_server, client) = restricted().await;
    let mut violations = client.permission_violations();
    let _subscription = client
        .nats()
        .unwrap()
        .subscribe("dev.chaos.>")
        .await
        .unwrap();
    client.nats().unwrap().flush().await.unwrap();
    let violation = tokio::time::timeout(Duration::from_secs(30), violations.recv())
        .await
        .expect("no violation reported")
        .unwrap();
    assert_eq!(violation.operation, Operation::Subscribe);
    assert_eq!(violation.subject, "dev.chaos.>");
}

/// A refused JetStream API request fails `build` at once, typed.
#[tokio::test]
async fn creating_a_durable_consumer_outside_permissions_is_permission_denied() {
    let (_server, client) = restricted().await;
    let checker = Checker::new("denied");
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        consumer(&client, "auditors", "CHAOS", &checker, Duration::ZERO).build(),
    )
    .await
    .expect("a refused consumer creation must not wait for the request timeout")
    .unwrap_err();
    assert!(
        matches!(err.kind(), ConsumeErrorKind::PermissionDenied { subject } if subject.starts_with("$JS.API.")),
        "{err:?}"
    );
}

/// A refused queue subscription fails `build`, typed.
#[tokio::test]
async fn an_ephemeral_consumer_outside_permissions_is_refused() {
    let (_server, client) = restricted().await;
    let result = EphemeralConsumer::builder(&client, "presence")
        .handle(|_event: Op, _ctx: Context| async { Ok::<_, HandlerError>(()) })
        .build()
        .await;
    let err = result.expect_err("build succeeded although the subscription was refused");
    assert!(
        !matches!(err.kind(), ConsumeErrorKind::InvalidConfig(_)),
        "{err:?}"
    );
    assert!(
        matches!(err.kind(), ConsumeErrorKind::PermissionDenied { subject } if subject.starts_with("dev.")),
        "{err:?}"
    );
}
