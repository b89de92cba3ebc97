//! Malformed messages on a consumed subject, published around good events:
//! each is dead-lettered with a reason, the runner neither panics nor stalls,
//! and every good event is handled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use jetevents::client::Client;
use jetevents::consume::{DeadLetterConfig, DeadLetterReason, DeadLetters, RetryPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

mod checker;
mod support;
use checker::{chaos_stream, consumer, eventually, op, Checker, Running};

/// Binary-mode CloudEvents headers of a valid `chaos.op.recorded.v1` event.
fn ce_headers(id: &str) -> HeaderMap {
    ce_headers_without(id, "")
}

/// [`ce_headers`] without the header `missing`.
fn ce_headers_without(id: &str, missing: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/badinput"),
        ("ce-type", "chaos.op.recorded.v1"),
        ("ce-datacontenttype", "application/json"),
    ] {
        if name != missing {
            headers.insert(name, value);
        }
    }
    headers
}

/// The JSON data of op `op_id`.
fn good_payload(op_id: &str) -> Bytes {
    let data = checker::Op {
        op: op_id.to_owned(),
        pad: String::new(),
    };
    Bytes::from(serde_json::to_vec(&data).unwrap())
}

/// The malformed messages, each with the reason it must be refused.
fn malformed() -> Vec<(&'static str, Option<HeaderMap>, Bytes)> {
    let mut cases = Vec::new();

    let mut structured = HeaderMap::new();
    structured.insert("Content-Type", "application/cloudevents+json");
    cases.push((
        "structured, not JSON",
        Some(structured.clone()),
        Bytes::from_static(b"{not json"),
    ));
    cases.push((
        "structured, JSON array",
        Some(structured),
        Bytes::from_static(b"[1,2,3]"),
    ));
    cases.push((
        "no headers, not JSON",
        None,
        Bytes::from_static(b"\x00\x01garbage"),
    ));

    for missing in ["ce-id", "ce-source", "ce-type", "ce-specversion"] {
        let mut headers = ce_headers_without("bad-missing", missing);
        // Keep one ce- header so the message is read as binary mode.
        headers.insert("ce-comment", "missing");
        let name: &'static str = match missing {
            "ce-id" => "missing id",
            "ce-source" => "missing source",
            "ce-type" => "missing type",
            _ => "missing specversion",
        };
        cases.push((name, Some(headers), good_payload("never")));
    }

    let mut v03 = ce_headers("bad-specversion");
    v03.insert("ce-specversion", "0.3");
    cases.push(("specversion 0.3", Some(v03), good_payload("never")));

    let mut overlong = ce_headers("bad-overlong");
    // An overlong encoding of '/': must not decode.
    overlong.insert("ce-subject", "%C0%AF");
    cases.push((
        "overlong UTF-8 in a header",
        Some(overlong),
        good_payload("never"),
    ));

    let mut escaped_invalid = ce_headers("bad-escape");
    // A lone '%' is literal, but escapes must still decode to UTF-8.
    escaped_invalid.insert("ce-subject", "100% %C3%28");
    cases.push((
        "invalid UTF-8 from a percent escape",
        Some(escaped_invalid),
        good_payload("never"),
    ));

    cases.push((
        "data of the wrong shape",
        Some(ce_headers("bad-data")),
        Bytes::from_static(br#"{"unexpected": true}"#),
    ));
    cases.push((
        "data not JSON",
        Some(ce_headers("bad-data-json")),
        Bytes::from_static(b"\xff\xfe not json"),
    ));
    cases
}

async fn setup(name: &str) -> (Client, String, Checker_) {
    let server = support::shared_server().await;
    let env = support::unique(name);
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("BAD");
    chaos_stream(&client, &stream, 1).await;
    let checker = Checker::new(name);
    (client, stream, checker)
}

type Checker_ = std::sync::Arc<Checker>;

fn dead_letters_of(client: &Client, stream: &str) -> DeadLetters {
    DeadLetters::with_config(
        client,
        DeadLetterConfig::new(
            format!("{stream}_DL"),
            format!("dl{}", stream.to_ascii_lowercase()),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dead_lettered_with_a_reason_and_good_ones_flow() {
    let (client, stream, checker) = setup("malformed").await;
    let running = Running::start(
        consumer(&client, "strict", &stream, &checker, Duration::ZERO)
            .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
            .ack_wait(Duration::from_secs(2))
            .pull_expiry(Duration::from_millis(500))
            .build()
            .await
            .unwrap(),
    );
    let subject = format!("{}.chaos.op.recorded.v1.p0", client.subjects().env());
    let cases = malformed();
    let publisher = client.publisher();
    for (n, (name, headers, payload)) in cases.iter().enumerate() {
        let ack = match headers {
            Some(headers) => client
                .jetstream()
                .unwrap()
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .unwrap(),
            None => client
                .jetstream()
                .unwrap()
                .publish(subject.clone(), payload.clone())
                .await
                .unwrap(),
        };
        ack.await
            .unwrap_or_else(|err| panic!("{name}: not stored: {err}"));
        // A good event after each bad one: the runner must reach it.
        let good = op("good", n, 10);
        let result = publisher.publish(&good).await;
        checker.record(&good.op, &result);
    }

    eventually(
        "every good event handled",
        Duration::from_secs(60),
        || async { checker.all_acked_handled() },
    )
    .await;
    let dead_letters = dead_letters_of(&client, &stream);
    eventually(
        "every malformed event dead-lettered",
        Duration::from_secs(60),
        || async { dead_letters.list(100).await.map(|l| l.len()).unwrap_or(0) >= cases.len() },
    )
    .await;
    let mut entries = dead_letters.list(100).await.unwrap();
    assert_eq!(entries.len(), cases.len());
    // Handlers run concurrently, so dead letters may be written out of
    // order: match them to the cases by their place in the event stream.
    entries.sort_by_key(|entry| entry.original_sequence);
    for (entry, (name, _, payload)) in entries.iter().zip(&cases) {
        println!("{name}: {} ({})", entry.reason, entry.error);
        assert_eq!(entry.reason, DeadLetterReason::Undecodable, "{name}");
        assert!(!entry.error.is_empty(), "{name}: no error text");
        assert_eq!(&entry.payload, payload, "{name}: payload not kept");
        // Refused on the first delivery: an undecodable event is not retried.
        assert_eq!(entry.delivery_count, 1, "{name}");
    }
    assert!(!running.is_finished(), "the runner stopped");
    running.stop().await;
    checker
        .report()
        .assert_no_loss()
        .assert_no_duplicates()
        .assert_all_acked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_neither_stall_nor_crash_the_runner() {
    let (client, stream, checker) = setup("huge").await;
    let running = Running::start(
        consumer(&client, "huge", &stream, &checker, Duration::ZERO)
            .ack_wait(Duration::from_secs(2))
            .pull_expiry(Duration::from_millis(500))
            .build()
            .await
            .unwrap(),
    );
    let subject = format!("{}.chaos.op.recorded.v1.p1", client.subjects().env());
    // JetStream stores at most 64 KiB of headers per message (larger ones
    // are refused with error 10097): just under that, one giant extension
    // value, thousands of small foreign headers, one giant broken header.
    let mut giant = ce_headers("huge-one");
    giant.insert("ce-note", "x".repeat(60 * 1024).as_str());
    let mut many = ce_headers("huge-many");
    for n in 0..2_500 {
        many.insert(format!("x-junk-{n}").as_str(), "0123456789");
    }
    let mut bad_giant = ce_headers("huge-bad");
    // Ends in an escape that is not UTF-8 ("Ã" then "("): refused.
    bad_giant.insert(
        "ce-subject",
        format!("{}%C3%28", "y".repeat(60 * 1024)).as_str(),
    );
    let cases = [
        ("giant extension", giant, "huge-giant"),
        ("2500 headers", many, "huge-many"),
        ("giant broken header", bad_giant, "huge-bad"),
    ];
    for (name, headers, op_id) in &cases {
        let stored = client
            .jetstream()
            .unwrap()
            .publish_with_headers(subject.clone(), headers.clone(), good_payload(op_id))
            .await
            .unwrap()
            .await;
        stored.unwrap_or_else(|err| panic!("{name}: not stored: {err}"));
        checker.acked(op_id);
    }
    let good = op("after-huge", 0, 10);
    let result = client.publisher().publish(&good).await;
    checker.record(&good.op, &result);

    // Valid events (however large) are handled; the broken one is
    // dead-lettered; the good event after them all gets through.
    let dead_letters = dead_letters_of(&client, &stream);
    eventually(
        "every huge message settled",
        Duration::from_secs(60),
        || async {
            let dead = dead_letters.list(10).await.map(|l| l.len()).unwrap_or(0);
            checker.handled_distinct() + dead >= 4 && checker.is_handled(&good.op)
        },
    )
    .await;
    let entries = dead_letters.list(10).await.unwrap();
    assert_eq!(entries.len(), 1, "only the broken one is dead-lettered");
    let entry = &entries[0];
    println!(
        "dead-lettered: {} ({} bytes of error)",
        entry.reason,
        entry.error.len()
    );
    assert_eq!(entry.reason, DeadLetterReason::Undecodable);
    assert!(entry.error.contains("ce-subject"), "{}", entry.error);
    assert!(!running.is_finished(), "the runner stopped");
    running.stop().await;
    // The valid giants and the good event were handled; the broken one is
    // the only acked op not handled.
    let report = checker.report();
    assert_eq!(report.lost, ["huge-bad"]);
    report.assert_no_duplicates();
}

/// Publishes one message with raw protocol bytes, so its headers can hold
/// what no client library would send (invalid UTF-8).
async fn raw_hpub(port: u16, subject: &str, header_block: &[u8], payload: &[u8]) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.unwrap().unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    write
        .write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
        )
        .await
        .unwrap();
    let total = header_block.len() + payload.len();
    let mut frame = format!("HPUB {subject} {} {total}\r\n", header_block.len()).into_bytes();
    frame.extend_from_slice(header_block);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();
    loop {
        let line = lines.next_line().await.unwrap().unwrap();
        assert!(!line.starts_with("-ERR"), "{line}");
        if line == "PONG" {
            break;
        }
    }
}

/// A consumer that reaches max_deliver within seconds (3 deliveries, 1 s
/// ack wait): what the unreadable-message tests wait for. The default bound
/// sits 100 deliveries above the attempts, for deliveries that are not
/// failed runs.
async fn quick_to_give_up(
    client: &Client,
    group: &str,
    stream: &str,
    checker: &Checker_,
) -> jetevents::consume::Consumer<checker::Handling> {
    consumer(client, group, stream, checker, Duration::ZERO)
        .retry(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(2))
        .max_deliver(3)
        .ack_wait(Duration::from_secs(1))
        .pull_expiry(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

/// A message the client cannot receive: async-nats drops the whole
/// connection on an HMSG whose header block it cannot read (not UTF-8, a
/// line without `:`, an invalid name), so the runner never sees it and the
/// server redelivers it until `max_deliver`. The max-deliveries advisory
/// watcher then copies it from the stream to the dead-letter stream with
/// reason `undeliverable` and the original header block, byte for byte.
///
/// The good event published right after it must be handled, not dragged
/// along: the runner keeps events pulled together with the poison message
/// safe (each connection loss returns them to the consumer, and they are
/// handled after the reconnect), so the only dead letter is the raw message.
///
/// With `instances` > 1, every instance of the group (each on its own
/// connection) gets the advisory: the copy must still be stored once.
async fn unreadable_header_block_is_dead_lettered(
    name: &str,
    header_block: &[u8],
    problem: &str,
    instances: usize,
) {
    let (client, stream, checker) = setup(name).await;
    let server = support::shared_server().await;
    let mut runners = Vec::new();
    for instance in 0..instances {
        let instance_client = if instance == 0 {
            client.clone()
        } else {
            support::connect(&server.url(), client.subjects().env(), |_| {}).await
        };
        runners.push(Running::start(
            quick_to_give_up(&instance_client, name, &stream, &checker).await,
        ));
    }
    // Each delivery of the raw message cuts the consumer's connection and
    // whatever requests it has in flight: the test publishes and reads
    // through a connection of its own.
    let observer = support::connect(&server.url(), client.subjects().env(), |_| {}).await;
    let subject = format!("{}.chaos.op.recorded.v1.p2", client.subjects().env());
    let payload = good_payload("raw");
    raw_hpub(server.client_port(), &subject, header_block, &payload).await;
    // The stream is new: the raw message is its first.
    let events = observer
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap();
    eventually("the raw message stored", Duration::from_secs(10), || {
        let mut events = events.clone();
        async move {
            events
                .info()
                .await
                .map(|info| info.state.last_sequence >= 1)
                .unwrap_or(false)
        }
    })
    .await;
    let raw_sequence = 1;
    let good = op(&format!("after-{name}"), 0, 10);
    let result = observer.publisher().publish(&good).await;
    checker.record(&good.op, &result);

    eventually(
        "the good event handled",
        Duration::from_secs(60),
        || async { checker.all_acked_handled() },
    )
    .await;
    let dead_letters = dead_letters_of(&observer, &stream);
    let entries = support::dead_lettered(
        "the raw message dead-lettered",
        &dead_letters,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(entries.len(), 1, "only the raw message is dead-lettered");
    let entry = &entries[0];
    println!("{name}: {} ({})", entry.reason, entry.error);
    assert_eq!(entry.reason, DeadLetterReason::Undeliverable);
    assert_eq!(entry.original_stream, stream);
    assert_eq!(entry.original_sequence, raw_sequence);
    assert_eq!(entry.original_subject, subject);
    assert_eq!(entry.consumer, name);
    // max_deliver (3): the server's own count, from the advisory.
    assert_eq!(entry.delivery_count, 3);
    assert!(entry.error.contains(problem), "{}", entry.error);
    assert_eq!(
        entry.original_header_block.as_deref(),
        Some(header_block),
        "original header block not kept byte for byte"
    );
    assert_eq!(entry.payload, payload);
    // The readable lines travel as headers.
    assert_eq!(
        entry.headers.get("ce-source").map(|v| v.as_str()),
        Some("/raw")
    );
    assert_eq!(
        entry.headers.get("ce-type").map(|v| v.as_str()),
        Some("chaos.op.recorded.v1")
    );
    for running in runners {
        assert!(!running.is_finished(), "a runner stopped");
        running.stop().await;
    }
    checker.report().assert_no_loss().assert_no_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_header_is_dead_lettered() {
    unreadable_header_block_is_dead_lettered(
        "utf8",
        b"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: \xff\xfe\xc0\xaf\r\nce-source: /raw\r\nce-type: chaos.op.recorded.v1\r\n\r\n",
        "line 3 is not UTF-8",
        1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_line_without_colon_is_dead_lettered() {
    unreadable_header_block_is_dead_lettered(
        "nocolon",
        b"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: raw-colon\r\nthis line has no colon\r\nce-source: /raw\r\nce-type: chaos.op.recorded.v1\r\n\r\n",
        "line 4 has no ':'",
        2,
    )
    .await;
}

/// The unreadable message sits in the middle of a backlog, so the first
/// pull brings it together with good events. Those after it in the same
/// read are lost with the connection; if the next pulls brought them with
/// it again they would reach max_deliver and be dropped. After a lost
/// connection the runner pulls one event at a time, so each good event
/// comes back on its own and is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pulled_with_an_unreadable_one_are_all_handled() {
    let (client, stream, checker) = setup("backlog").await;
    let server = support::shared_server().await;
    let publisher = client.publisher();
    let subject = format!("{}.chaos.op.recorded.v1.p2", client.subjects().env());
    for n in 0..40 {
        if n == 10 {
            raw_hpub(
                server.client_port(),
                &subject,
                b"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: \xff\xfe\r\n\r\n",
                &good_payload("raw"),
            )
            .await;
        }
        let good = op("backlog", n, 10);
        let result = publisher.publish(&good).await;
        checker.record(&good.op, &result);
    }
    // Started after the backlog is stored: its first pull takes it all.
    let running = Running::start(quick_to_give_up(&client, "backlog", &stream, &checker).await);
    let observer = support::connect(&server.url(), client.subjects().env(), |_| {}).await;
    let dead_letters = dead_letters_of(&observer, &stream);
    support::dead_lettered(
        "the raw message dead-lettered",
        &dead_letters,
        Duration::from_secs(60),
    )
    .await;
    eventually(
        "every good event handled",
        Duration::from_secs(30),
        || async { checker.all_acked_handled() },
    )
    .await;
    let entries = dead_letters.list(50).await.unwrap();
    assert_eq!(entries.len(), 1, "only the raw message is dead-lettered");
    assert_eq!(entries[0].reason, DeadLetterReason::Undeliverable);
    running.stop().await;
    checker.report().assert_no_loss();
}
