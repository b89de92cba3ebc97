//! Crypto-shredding against a real server: per-aggregate data keys in a KV
//! bucket; deleting one makes that aggregate's events undecryptable
//! (dead-lettered `shredded`) while other aggregates' events flow.
#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{Context, DeadLetterReason};
use jetevents::encryption::{self, AggregateKeys, Encryption};

mod consume_common;
mod protect_common;
mod support;
use consume_common::{eventually, unique, Log, Running, World};
use protect_common::{card, contains, old_keyring, stored, CardAdded, PAN};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_shredded_aggregate_is_dead_lettered_while_others_flow() {
    let world = World::on_shared_server().await;
    let bucket = unique("KEYS");
    let aggregates = AggregateKeys::open(&world.client, &bucket).await.unwrap();
    let publisher = world
        .client
        .publisher()
        .with_encryption(Encryption::new(old_keyring()).per_aggregate(aggregates.clone()));
    let first = publisher.publish(&card("alice")).await.unwrap();
    publisher.publish(&card("alice")).await.unwrap();
    publisher.publish(&card("bob")).await.unwrap();

    let (_, payload, envelope) = stored(&world, first.sequence).await;
    assert!(!contains(&payload, PAN));
    assert_eq!(
        envelope
            .extension(encryption::KEY_SCOPE)
            .map(ToString::to_string),
        Some("aggregate".to_owned())
    );
    assert!(envelope.extension(encryption::WRAPPED_KEY).is_none());

    aggregates.shred("alice").await.unwrap();

    // Another process: its own view of the bucket.
    let decryption = Encryption::new(old_keyring())
        .per_aggregate(AggregateKeys::open(&world.client, &bucket).await.unwrap());
    let seen: Log<CardAdded> = Log::default();
    let consumer = world
        .consumer("wallet")
        .decrypt_with(decryption)
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
    let running = Running::start(consumer);
    let dead_letters = world.dead_letter_api();
    eventually("alice's two events dead-lettered", WAIT, || async {
        dead_letters.list(10).await.map(|l| l.len()).unwrap_or(0) == 2
    })
    .await;
    for entry in dead_letters.list(10).await.unwrap() {
        assert_eq!(entry.reason, DeadLetterReason::Shredded, "{}", entry.error);
        assert!(entry.original_subject.ends_with(".alice"));
    }
    world.wait_settled("wallet").await;
    let customers: Vec<String> = seen.items().into_iter().map(|c| c.customer).collect();
    assert_eq!(customers, ["bob"]);
    running.stop().await;
}
