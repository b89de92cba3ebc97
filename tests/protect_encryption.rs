//! Envelope encryption against a real server: round trips in both
//! encodings, nothing readable in the stream, undecryptable events
//! dead-lettered while others flow, key rotation.
#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{Context, DeadLetterReason};
use jetevents::encryption::{self, Encryption, Keyring};
use jetevents::publish::PublishOptions;
use jetevents::Encoding;

mod consume_common;
mod protect_common;
mod support;
use consume_common::{eventually, Log, Running, World};
use protect_common::{
    card, contains, encrypting_publisher, old_keyring, rotated_keyring, sealed_card, stored,
    CardAdded, PAN,
};

const WAIT: Duration = Duration::from_secs(20);

/// A running consumer `group` of `world` decrypting with `keyring`, and
/// the cards its handler saw.
async fn wallet(world: &World, group: &str, keyring: Keyring) -> (Running, Log<CardAdded>) {
    let seen: Log<CardAdded> = Log::default();
    let consumer = world
        .consumer(group)
        .decrypt_with(Encryption::new(keyring))
        .with_state(seen.clone())
        .handle(
            |event: CardAdded, ctx: Context<Log<CardAdded>>| async move {
                ctx.state().push(event);
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    (Running::start(consumer), seen)
}

/// The customers of `cards`, sorted.
fn customers(cards: &[CardAdded]) -> Vec<String> {
    let mut customers: Vec<String> = cards.iter().map(|card| card.customer.clone()).collect();
    customers.sort();
    customers
}

#[tokio::test]
async fn encrypted_events_round_trip_in_both_encodings_and_store_no_plaintext() {
    let world = World::on_shared_server().await;
    let (running, seen) = wallet(&world, "wallet", old_keyring()).await;
    let publisher = encrypting_publisher(&world, old_keyring());

    let binary = publisher.publish(&card("c-binary")).await.unwrap();
    let structured = publisher
        .publish_with(
            &card("c-structured"),
            PublishOptions::new().encoding(Encoding::Structured),
        )
        .await
        .unwrap();
    eventually("both cards handled", WAIT, || async { seen.len() == 2 }).await;
    assert_eq!(customers(&seen.items()), ["c-binary", "c-structured"]);
    assert!(seen.items().iter().all(|card| card.pan == PAN));

    for receipt in [binary, structured] {
        let (headers, payload, envelope) = stored(&world, receipt.sequence).await;
        assert!(!contains(&payload, PAN), "plaintext in the stored payload");
        assert!(!headers.contains(PAN), "plaintext in the stored headers");
        // Attributes stay readable for routing.
        assert_eq!(envelope.event_type, "shop.card.added.v1");
        assert_eq!(
            envelope
                .extension(encryption::KEY_ID)
                .map(ToString::to_string),
            Some("old".to_owned())
        );
        assert_eq!(
            envelope.data_content_type.as_deref(),
            Some("application/octet-stream")
        );
    }
    world.wait_settled("wallet").await;
    running.stop().await;
}

#[tokio::test]
async fn tampered_and_unknown_key_events_are_dead_lettered_while_others_flow() {
    let world = World::on_shared_server().await;
    let (running, seen) = wallet(&world, "wallet", old_keyring()).await;
    let publisher = encrypting_publisher(&world, old_keyring());
    let plain_publisher = world.client.publisher();

    publisher.publish(&card("c-before")).await.unwrap();
    let (subject, mut tampered) =
        sealed_card(&world, &Encryption::new(old_keyring()), "c-tampered");
    let mut data = tampered.data.take().unwrap().to_vec();
    let last = data.len() - 1;
    data[last] ^= 1;
    tampered.data = Some(data.into());
    plain_publisher
        .publish_envelope(&subject, tampered, PublishOptions::new())
        .await
        .unwrap();
    let stranger = Encryption::new(Keyring::new().with_key("stranger", [9; 32]));
    let (subject, unknown) = sealed_card(&world, &stranger, "c-unknown");
    plain_publisher
        .publish_envelope(&subject, unknown, PublishOptions::new())
        .await
        .unwrap();
    publisher.publish(&card("c-after")).await.unwrap();

    eventually("both good cards handled", WAIT, || async {
        seen.len() == 2
    })
    .await;
    assert_eq!(customers(&seen.items()), ["c-after", "c-before"]);
    let dead_letters = world.dead_letter_api();
    eventually("two dead letters", WAIT, || async {
        dead_letters.list(10).await.map(|l| l.len()).unwrap_or(0) == 2
    })
    .await;
    let mut errors = Vec::new();
    for entry in dead_letters.list(10).await.unwrap() {
        assert_eq!(entry.reason, DeadLetterReason::Undecryptable);
        // Copied as stored: still encrypted.
        assert!(!contains(&entry.payload, PAN));
        assert!(!entry.error.contains(PAN));
        errors.push(entry.error);
    }
    errors.sort();
    assert!(errors[0].contains("authentication failed"), "{errors:?}");
    assert!(errors[1].contains("\"stranger\""), "{errors:?}");
    world.wait_settled("wallet").await;
    running.stop().await;
}

#[tokio::test]
async fn rotation_keeps_events_of_the_old_key_readable() {
    let world = World::on_shared_server().await;
    let before = encrypting_publisher(&world, old_keyring())
        .publish(&card("c-old"))
        .await
        .unwrap();
    let after = encrypting_publisher(&world, rotated_keyring())
        .publish(&card("c-new"))
        .await
        .unwrap();
    for (receipt, key_id) in [(before, "old"), (after, "new")] {
        let (_, _, envelope) = stored(&world, receipt.sequence).await;
        assert_eq!(
            envelope
                .extension(encryption::KEY_ID)
                .map(ToString::to_string),
            Some(key_id.to_owned())
        );
    }

    let (running, seen) = wallet(&world, "wallet", rotated_keyring()).await;
    eventually("both cards handled", WAIT, || async { seen.len() == 2 }).await;
    assert_eq!(customers(&seen.items()), ["c-new", "c-old"]);
    world.wait_settled("wallet").await;
    running.stop().await;
}
