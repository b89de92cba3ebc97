//! Claim check against a real server: data too large for a message goes to
//! an Object Store bucket and comes back before the handler; a replaced or
//! deleted object is dead-lettered with its reason while other events
//! flow; cleanup removes objects whose events are gone; with encryption
//! the bucket holds ciphertext.
// The shared helpers of the protect tests need the feature.
#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::claim_check::{self, ClaimCheck};
use jetevents::consume::DeadLetterReason;
use jetevents::publish::PublishOptions;
use jetevents::Encoding;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

mod consume_common;
mod protect_common;
mod support;
use consume_common::{eventually, unique, World};
use protect_common::{collecting, stored};

const WAIT: Duration = Duration::from_secs(60);

/// An event that carries a document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DocumentAttached {
    name: String,
    body: String,
}

impl jetevents::Event for DocumentAttached {
    const TYPE: &'static str = "shop.document.attached.v1";
    fn key(&self) -> Option<String> {
        Some(self.name.clone())
    }
}

fn document(name: &str, bytes: usize) -> DocumentAttached {
    let line = format!("{name}: lorem ipsum dolor sit amet\n");
    DocumentAttached {
        name: name.to_owned(),
        body: line.repeat(bytes / line.len() + 1),
    }
}

/// The raw object `name` of `bucket`.
async fn object_bytes(world: &World, bucket: &str, name: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    object_store(world, bucket)
        .await
        .get(name)
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    bytes
}

async fn object_store(
    world: &World,
    bucket: &str,
) -> async_nats::jetstream::object_store::ObjectStore {
    world
        .client
        .jetstream()
        .unwrap()
        .get_object_store(bucket)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_50_mib_document_round_trips_through_the_bucket() {
    let world = World::on_shared_server().await;
    let bucket = unique("DOCS");
    let claim_check = ClaimCheck::open(&world.client, &bucket).await.unwrap();
    let publisher = world.client.publisher().with_claim_check(claim_check);
    let large = document("large", 50 * 1024 * 1024);
    let small = document("small", 100);

    let receipt = publisher.publish(&large).await.unwrap();
    publisher.publish(&small).await.unwrap();

    // The stored event is a reference; the bucket holds the data.
    let (_, payload, envelope) = stored(&world, receipt.sequence).await;
    assert!(payload.is_empty(), "{} bytes stored", payload.len());
    let object = envelope.extension(claim_check::OBJECT).unwrap().to_string();
    assert_eq!(object, receipt.event_id);
    assert_eq!(
        envelope.extension(claim_check::BUCKET).unwrap().to_string(),
        bucket
    );
    let digest = envelope.extension(claim_check::DIGEST).unwrap().to_string();
    assert_eq!(digest.len(), 64);
    let stored_data = object_bytes(&world, &bucket, &object).await;
    assert_eq!(
        serde_json::from_slice::<DocumentAttached>(&stored_data).unwrap(),
        large
    );
    let (_, small_payload, small_envelope) = stored(&world, receipt.sequence + 1).await;
    assert!(!small_payload.is_empty());
    assert!(small_envelope.extension(claim_check::OBJECT).is_none());

    let (running, seen) = collecting::<DocumentAttached>(world.consumer("archive")).await;
    eventually("both documents handled", WAIT, || async { seen.len() == 2 }).await;
    let documents = seen.items();
    let handled = |name: &str| documents.iter().find(|d| d.name == name).unwrap();
    assert!(
        *handled("large") == large,
        "the large document came back changed"
    );
    assert_eq!(*handled("small"), small);
    world.wait_settled("archive").await;
    running.stop().await;
}

#[tokio::test]
async fn a_replaced_and_a_deleted_object_are_dead_lettered_while_others_flow() {
    let world = World::on_shared_server().await;
    let bucket = unique("DOCS");
    let claim_check = ClaimCheck::open(&world.client, &bucket)
        .await
        .unwrap()
        .threshold(1024);
    let publisher = world.client.publisher().with_claim_check(claim_check);
    let mut published = Vec::new();
    for name in ["kept", "replaced", "deleted", "inline"] {
        let bytes = if name == "inline" { 100 } else { 4096 };
        published.push(publisher.publish(&document(name, bytes)).await.unwrap());
    }
    let store = object_store(&world, &bucket).await;
    store
        .put(
            published[1].event_id.as_str(),
            &mut &b"{\"name\":\"replaced\",\"body\":\"forged\"}"[..],
        )
        .await
        .unwrap();
    store.delete(&published[2].event_id).await.unwrap();

    let (running, seen) = collecting::<DocumentAttached>(world.consumer("archive")).await;
    eventually("the intact documents handled", WAIT, || async {
        seen.len() == 2
    })
    .await;
    let mut names: Vec<String> = seen.items().into_iter().map(|d| d.name).collect();
    names.sort();
    assert_eq!(names, ["inline", "kept"]);
    let dead_letters = world.dead_letter_api();
    eventually("two dead letters", WAIT, || async {
        dead_letters.list(10).await.map(|l| l.len()).unwrap_or(0) == 2
    })
    .await;
    let mut reasons: Vec<(String, DeadLetterReason)> = dead_letters
        .list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|entry| (entry.original_subject, entry.reason))
        .collect();
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(reasons[0].0.ends_with(".deleted"), "{reasons:?}");
    assert_eq!(reasons[0].1, DeadLetterReason::ClaimMissing);
    assert!(reasons[1].0.ends_with(".replaced"), "{reasons:?}");
    assert_eq!(reasons[1].1, DeadLetterReason::ClaimCorrupt);
    world.wait_settled("archive").await;
    running.stop().await;
}

#[tokio::test]
async fn cleanup_removes_objects_whose_events_are_gone_and_keeps_the_others() {
    let world = World::on_shared_server().await;
    let bucket = unique("DOCS");
    let claim_check = ClaimCheck::open(&world.client, &bucket)
        .await
        .unwrap()
        .threshold(1024);
    let publisher = world
        .client
        .publisher()
        .with_claim_check(claim_check.clone());
    let live_binary = publisher.publish(&document("binary", 4096)).await.unwrap();
    let live_structured = publisher
        .publish_with(
            &document("structured", 4096),
            PublishOptions::new().encoding(Encoding::Structured),
        )
        .await
        .unwrap();
    let gone = publisher.publish(&document("gone", 4096)).await.unwrap();
    publisher.publish(&document("inline", 100)).await.unwrap();
    world
        .stream()
        .await
        .delete_message(gone.sequence)
        .await
        .unwrap();
    let streams = [world.stream.as_str()];

    // Within the grace period nothing goes.
    let report = claim_check
        .remove_orphans(&world.client, &streams, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((report.kept, report.removed.len()), (3, 0));

    let report = claim_check
        .remove_orphans(&world.client, &streams, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&gone.event_id));
    assert_eq!(report.kept, 2);
    let store = object_store(&world, &bucket).await;
    let deleted = |id: String| {
        let store = store.clone();
        async move { store.info(id).await.unwrap().deleted }
    };
    assert!(!deleted(live_binary.event_id).await);
    assert!(!deleted(live_structured.event_id).await);
    assert!(deleted(gone.event_id).await);
}

#[tokio::test]
async fn encrypted_data_is_stored_encrypted_and_comes_back_in_plaintext() {
    use jetevents::encryption::Encryption;
    use protect_common::{card, contains, old_keyring, CardAdded, PAN};

    let world = World::on_shared_server().await;
    let bucket = unique("DOCS");
    let claim_check = ClaimCheck::open(&world.client, &bucket)
        .await
        .unwrap()
        .threshold(16);
    let publisher = world
        .client
        .publisher()
        .with_encryption(Encryption::new(old_keyring()))
        .with_claim_check(claim_check);
    let receipt = publisher.publish(&card("c-claimed")).await.unwrap();

    let (_, payload, envelope) = stored(&world, receipt.sequence).await;
    assert!(payload.is_empty());
    assert!(envelope
        .extension(jetevents::encryption::ALGORITHM)
        .is_some());
    let object = object_bytes(&world, &bucket, &receipt.event_id).await;
    assert!(!object.is_empty());
    assert!(!contains(&object, PAN), "the bucket holds plaintext");

    let (running, seen) = collecting::<CardAdded>(
        world
            .consumer("wallet")
            .decrypt_with(Encryption::new(old_keyring())),
    )
    .await;
    eventually("the card handled", WAIT, || async { seen.len() == 1 }).await;
    assert_eq!(seen.items(), [card("c-claimed")]);
    world.wait_settled("wallet").await;
    running.stop().await;
}
