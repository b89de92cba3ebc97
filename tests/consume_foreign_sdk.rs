//! Events another CloudEvents SDK put on the stream (raw header values, as
//! the JavaScript SDK's binary binding writes them) reach typed handlers
//! with their attribute values; invalid UTF-8 is still dead-lettered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{Context, DeadLetterReason};
use jetevents::envelope::Envelope;

mod consume_common;
mod foreign_sdk;
mod support;
use consume_common::{eventually, Log, OrderPlaced, Running, World};
use foreign_sdk::{assert_js_sdk_attributes, js_sdk_message, JS_SDK_SUBJECTS};

#[tokio::test]
async fn js_sdk_events_are_handled_with_their_raw_attribute_values() {
    let world = World::on_shared_server().await;
    let seen: Log<(OrderPlaced, Envelope)> = Log::default();
    let consumer = world
        .consumer("js-readers")
        .with_state(seen.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(OrderPlaced, Envelope)>>| async move {
                ctx.state().push((event, ctx.envelope().clone()));
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    // Published as the other SDK's service would: plain NATS headers.
    let jetstream = world.client.jetstream().unwrap();
    for n in 0..JS_SDK_SUBJECTS.len() {
        let (headers, body) = js_sdk_message(n);
        let subject = world.subject_of(n as u64);
        let ack = jetstream.publish_with_headers(subject, headers, body);
        ack.await.unwrap().await.unwrap();
    }
    // An escape that decodes to invalid UTF-8 ("Ã" then "("): still refused.
    let (mut headers, body) = js_sdk_message(0);
    headers.insert("ce-subject", "caf%C3%28");
    let invalid_sequence = jetstream
        .publish_with_headers(world.subject_of(0), headers, body)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    eventually(
        "every JS SDK event handled",
        Duration::from_secs(20),
        || async { seen.len() >= JS_SDK_SUBJECTS.len() },
    )
    .await;
    support::dead_lettered(
        "the invalid UTF-8 event dead-lettered",
        &world.dead_letter_api(),
        Duration::from_secs(20),
    )
    .await;
    world.wait_settled("js-readers").await;
    running.stop().await;

    let mut seen = seen.items();
    seen.sort_by_key(|(event, _)| event.n);
    assert_eq!(seen.len(), JS_SDK_SUBJECTS.len(), "an event handled twice");
    for (n, (event, envelope)) in seen.iter().enumerate() {
        assert_eq!(event.n, n as u64);
        assert_eq!(event.order, format!("o-{n}"));
        assert_js_sdk_attributes(n, envelope);
    }
    // Settled: whatever was to be dead-lettered is by now.
    let dead_letters = world.dead_letter_api().list(50).await.unwrap();
    assert_eq!(
        dead_letters.len(),
        1,
        "only the invalid event is dead-lettered"
    );
    let entry = &dead_letters[0];
    assert_eq!(entry.reason, DeadLetterReason::Undecodable);
    assert_eq!(entry.original_sequence, invalid_sequence);
    assert!(entry.error.contains("ce-subject"), "{}", entry.error);
}
