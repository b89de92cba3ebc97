//! Retiring a key-encryption key against a real server: aggregate keys
//! rewrapped in their KV bucket, and a stream's per-event keys rewrapped
//! by re-publishing it to a new stream; afterwards the events read without
//! the old key.
#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::encryption::{AggregateKeys, Encryption, Keyring};

mod consume_common;
mod protect_common;
mod support;
use consume_common::{eventually, unique, World};
use protect_common::{
    card, collecting, encrypting_publisher, old_keyring, rotated_keyring, CardAdded,
};

const WAIT: Duration = Duration::from_secs(20);

/// The keyring once the old key is retired.
fn retired_keyring() -> Keyring {
    rotated_keyring().without_key("old")
}

/// Waits until `world`'s consumer decrypting with `decryption` handled the
/// cards of `customers`.
async fn expect_readable(world: &World, decryption: Encryption, customers: &[&str]) {
    let (running, seen) =
        collecting::<CardAdded>(world.consumer("wallet").decrypt_with(decryption)).await;
    eventually("every card handled", WAIT, || async {
        seen.len() == customers.len()
    })
    .await;
    let mut handled: Vec<String> = seen.items().into_iter().map(|c| c.customer).collect();
    handled.sort();
    assert_eq!(handled, customers);
    world.wait_settled("wallet").await;
    assert!(world.dead_letter_api().list(10).await.unwrap().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn rewrapped_aggregate_keys_read_without_the_old_key() {
    let world = World::on_shared_server().await;
    let bucket = unique("KEYS");
    let aggregates = AggregateKeys::open(&world.client, &bucket).await.unwrap();
    let publisher = world
        .client
        .publisher()
        .with_encryption(Encryption::new(old_keyring()).per_aggregate(aggregates.clone()));
    for customer in ["alice", "bob"] {
        publisher.publish(&card(customer)).await.unwrap();
    }

    let rotation = Encryption::new(rotated_keyring()).per_aggregate(aggregates.clone());
    assert_eq!(rotation.rewrap_aggregate_keys().await.unwrap(), 2);
    // Already under the newest key: nothing left to do.
    assert_eq!(rotation.rewrap_aggregate_keys().await.unwrap(), 0);

    let retired = AggregateKeys::open(&world.client, &bucket).await.unwrap();
    expect_readable(
        &world,
        Encryption::new(retired_keyring()).per_aggregate(retired),
        &["alice", "bob"],
    )
    .await;
}

#[tokio::test]
async fn a_stream_republished_with_rewrapped_keys_reads_without_the_old_key() {
    let old_world = World::on_shared_server().await;
    let publisher = encrypting_publisher(&old_world, old_keyring());
    let mut originals = Vec::new();
    for customer in ["carol", "dave"] {
        originals.push(publisher.publish(&card(customer)).await.unwrap().event_id);
    }
    old_world.publish(1).await;

    let new_world = World::on_shared_server().await;
    let old_prefix = format!("{}.", old_world.client.subjects().env());
    let new_prefix = format!("{}.", new_world.client.subjects().env());
    let report = Encryption::new(rotated_keyring())
        .republish_rewrapped(
            &old_world.client,
            &old_world.stream,
            &new_world.client.publisher(),
            |subject| subject.replacen(&old_prefix, &new_prefix, 1),
        )
        .await
        .unwrap();
    assert_eq!((report.republished, report.rewrapped), (3, 2));
    let copied = new_world
        .stream()
        .await
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(copied, 3);
    for (sequence, id) in (1..).zip(&originals) {
        let (_, _, envelope) = protect_common::stored(&new_world, sequence).await;
        assert_eq!(&envelope.id, id, "the copy keeps the event's id");
    }

    expect_readable(
        &new_world,
        Encryption::new(retired_keyring()),
        &["carol", "dave"],
    )
    .await;
}
