//! Hostile input on the publishing and naming side: what is escaped reaches
//! the wire as one safe token, what is refused never reaches the server at
//! all (its inbound message counter does not move).
//!
//! Complements `tests/publish.rs` (keys through `publish`) and
//! `tests/subject.rs` (the escaping itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::StreamExt;
use jetevents::client::{Client, ConnectErrorKind};
use jetevents::codec::Encoding;
use jetevents::config::Config;
use jetevents::consume::{ConsumeErrorKind, Consumer, Context, HandlerError};
use jetevents::envelope::Envelope;
use jetevents::publish::{PublishErrorKind, PublishOptions};
use jetevents_testcontainers::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod checker;
mod support;
use checker::{chaos_stream, op, Op};

/// Hostile strings: subject syntax, whitespace, control characters, unicode
/// separators, a NUL, path traversal, and sizes around the limits.
fn hostile() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a.>",
        ">",
        "*",
        "a.*.b",
        "..",
        ".",
        " ",
        "with space",
        "tab\there",
        "nul\0byte",
        "cr\rlf\n",
        "\u{2028}line-sep",
        "\u{feff}bom",
        "../../etc/passwd",
        "%2E",
        "%",
        "$JS.API.STREAM.DELETE.X",
        "_INBOX.x",
        "ünï/cødé 🚀",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    keys.push("k".repeat(10_000));
    keys.push(".".repeat(10_000));
    keys
}

/// The server's count of messages received from clients (`/varz`
/// `in_msgs`), read over plain HTTP.
async fn server_in_msgs(server: &NatsServer) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.monitor_port()))
        .await
        .unwrap();
    stream
        .write_all(b"GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let varz: serde_json::Value = serde_json::from_str(body).unwrap();
    varz["in_msgs"].as_u64().unwrap()
}

async fn own_server() -> (NatsServer, Client) {
    let server = NatsServer::start().await.unwrap();
    let client = support::connect(&server.url(), "dev", |_| {}).await;
    chaos_stream(&client, "CHAOS", 1).await;
    (server, client)
}

#[tokio::test]
async fn hostile_keys_reach_the_wire_as_one_safe_token_or_not_at_all() {
    let (server, client) = own_server().await;
    // Everything published on the event subjects, as the server routes it.
    let mut spy = client.nats().unwrap().subscribe("dev.>").await.unwrap();
    client.nats().unwrap().flush().await.unwrap();
    let publisher = client.publisher();

    let mut sent = 0;
    for key in hostile() {
        let before = server_in_msgs(&server).await;
        let result = publisher
            .publish_with(&op("hostile", 0, 0), PublishOptions::new().key(key.clone()))
            .await;
        match result {
            Ok(receipt) => {
                sent += 1;
                let tokens: Vec<&str> = receipt.subject.split('.').collect();
                assert_eq!(tokens.len(), 6, "{key:?} -> {}", receipt.subject);
                assert!(
                    receipt.subject.bytes().all(|b| b.is_ascii_graphic()),
                    "{key:?} -> {:?}",
                    receipt.subject
                );
                assert!(!tokens[5].contains(['*', '>']), "{key:?}");
                assert_eq!(jetevents::subject::unescape_key(tokens[5]).unwrap(), key);
            }
            Err(err) => {
                assert!(
                    matches!(
                        err.kind(),
                        PublishErrorKind::InvalidSubject | PublishErrorKind::InvalidEvent
                    ),
                    "{key:?}: {err:?}"
                );
                // Refused before the wire: the server received nothing.
                assert_eq!(
                    server_in_msgs(&server).await,
                    before,
                    "{key:?} reached the server"
                );
            }
        }
    }
    // What was sent arrived on exactly the subjects the receipts named, and
    // nothing else (no wildcard fan-out, no foreign subject).
    for _ in 0..sent {
        let message = tokio::time::timeout(Duration::from_secs(10), spy.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            message.subject.starts_with("dev.chaos.op.recorded.v1."),
            "{}",
            message.subject
        );
    }
    client.nats().unwrap().flush().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spy.next())
            .await
            .is_err(),
        "a message arrived that no receipt accounts for"
    );
    println!(
        "{sent} of {} hostile keys escaped, the rest refused",
        hostile().len()
    );
    assert!(sent >= 15, "escapable keys were refused");
}

#[tokio::test]
async fn hostile_metadata_and_oversized_events_are_refused_before_the_wire() {
    let (server, client) = own_server().await;
    let publisher = client.publisher();
    let before = server_in_msgs(&server).await;

    // Control characters in extension values: CloudEvents forbids them, and
    // in a header they would split the header block.
    for value in ["cr\r\nx-injected: 1", "nul\0", "bell\x07"] {
        let err = publisher
            .publish_with(
                &op("meta", 0, 0),
                PublishOptions::new().metadata("note", value),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), &PublishErrorKind::InvalidEvent, "{value:?}");
    }
    // Extension names that are not lower-case letters and digits.
    for name in ["Note", "x-note", "no te", "note\r\n", "", "ñote"] {
        let err = publisher
            .publish_with(&op("meta", 0, 0), PublishOptions::new().metadata(name, "v"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), &PublishErrorKind::InvalidEvent, "{name:?}");
    }
    // Correlation and causation ids with control characters.
    let err = publisher
        .publish_with(
            &op("meta", 0, 0),
            PublishOptions::new().correlation_id("a\nb"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &PublishErrorKind::InvalidEvent);

    // Oversized, in both encodings, and as a raw envelope.
    let limit = client.nats().unwrap().max_payload();
    let big = op("big", 0, limit);
    for encoding in [Encoding::Binary, Encoding::Structured] {
        let err = publisher
            .publish_with(&big, PublishOptions::new().encoding(encoding))
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), PublishErrorKind::PayloadTooLarge { size, .. } if *size > limit),
            "{encoding:?}: {err:?}"
        );
    }
    let mut envelope = Envelope::from_event("/badinput", &big).unwrap();
    envelope.subject = Some("s".repeat(1024));
    let err = publisher
        .publish_envelope(
            "dev.chaos.op.recorded.v1.p0",
            envelope,
            PublishOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), PublishErrorKind::PayloadTooLarge { .. }),
        "{err:?}"
    );
    let many = vec![big.clone(), big];
    for result in publisher.publish_many(&many, 2).await {
        assert!(matches!(
            result.unwrap_err().kind(),
            PublishErrorKind::PayloadTooLarge { .. }
        ));
    }

    assert_eq!(
        server_in_msgs(&server).await,
        before,
        "a refused publish reached the server"
    );
    // And the connection is unharmed.
    publisher.publish(&op("after", 0, 10)).await.unwrap();
}

#[tokio::test]
async fn headers_over_the_jetstream_limit_are_a_typed_error_and_not_stored() {
    let (server, client) = own_server().await;
    let before = server_in_msgs(&server).await;
    // JetStream refuses more than 64 KiB of headers (error 10097), far below
    // max_payload: the publisher checks it before sending.
    let result = client
        .publisher()
        .publish_with(
            &op("hdr", 0, 0),
            PublishOptions::new().metadata("note", "n".repeat(70 * 1024)),
        )
        .await;
    let err = result.unwrap_err();
    println!("70 KiB of headers: {err:?}");
    match err.kind() {
        PublishErrorKind::HeadersTooLarge { size, limit } => {
            assert_eq!(*limit, 65_535);
            assert!(*size > 70 * 1024, "{size}");
        }
        other => panic!("expected HeadersTooLarge, got {other:?}"),
    }
    assert_eq!(
        server_in_msgs(&server).await,
        before,
        "the refused publish reached the server"
    );
    let mut stream = client
        .jetstream()
        .unwrap()
        .get_stream("CHAOS")
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
    // Just under the limit is stored.
    client
        .publisher()
        .publish_with(
            &op("hdr", 1, 0),
            PublishOptions::new().metadata("note", "n".repeat(60 * 1024)),
        )
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn hostile_names_for_environment_and_group_are_refused_before_the_wire() {
    let (server, client) = own_server().await;
    let before = server_in_msgs(&server).await;
    for env in ["dev.prod", "*", ">", "", " ", "dev prod", "dev\r\n", "dév"] {
        let config = Config::default().with_servers([server.url()]).with_env(env);
        let err = Client::connect(config).await.unwrap_err();
        assert!(
            matches!(err.kind(), ConnectErrorKind::InvalidConfig(_)),
            "{env:?}: {err:?}"
        );
    }
    for group in ["a.b", "*", ">", "", "with space", "x\r\ny", "ünï"] {
        let err = Consumer::builder(&client, group)
            .stream("CHAOS")
            .handle(|_e: Op, _c: Context| async { Ok::<_, HandlerError>(()) })
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), ConsumeErrorKind::InvalidConfig(_)),
            "{group:?}: {err:?}"
        );
    }
    for pattern in ["chaos.>.x", "chaos op", "chaos.\r\n", "a.b.c.d.e.f"] {
        let err = Consumer::builder(&client, "patterns")
            .stream("CHAOS")
            .handle_pattern(pattern, |_e: Envelope, _c: Context| async {
                Ok::<_, HandlerError>(())
            })
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), ConsumeErrorKind::InvalidConfig(_)),
            "{pattern:?}: {err:?}"
        );
    }
    assert_eq!(
        server_in_msgs(&server).await,
        before,
        "a refused name reached the server"
    );
}

/// Fails today: `Subjects::new` limits no length, so a 10 KB environment is
/// accepted, and every subject built from it is longer than the server's
/// control line limit (4 KiB by default).
#[tokio::test]
async fn a_ten_kilobyte_environment_is_refused() {
    let (server, _client) = own_server().await;
    let config = Config::default()
        .with_servers([server.url()])
        .with_env("e".repeat(10_000));
    match Client::connect(config).await {
        Err(err) => assert!(
            matches!(err.kind(), ConnectErrorKind::InvalidConfig(_)),
            "{err:?}"
        ),
        Ok(client) => {
            let result = tokio::time::timeout(
                Duration::from_secs(30),
                client.publisher().publish(&op("long-env", 0, 0)),
            )
            .await;
            panic!("a 10 KB environment was accepted; publishing gave {result:?}");
        }
    }
}
