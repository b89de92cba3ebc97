//! Helpers of the payload-protection tests (`tests/protect_*.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::encryption::{Encryption, Keyring};
use jetevents::publish::Publisher;
use jetevents::Envelope;
use serde::{Deserialize, Serialize};

use crate::consume_common::World;

/// Data no stored byte, log line or error may show.
pub const PAN: &str = "4111-SECRET-PAN-0042";
/// The two keys of the rotation tests, in base64 as a keyring file holds them.
pub const OLD_KEY_B64: &str = "b2xkLWtleS1vbGQta2V5LW9sZC1rZXktb2xkLWtleSE=";
pub const NEW_KEY_B64: &str = "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=";

/// An event with card data, in the world's `shop` domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CardAdded {
    pub customer: String,
    pub pan: String,
}

impl jetevents::Event for CardAdded {
    const TYPE: &'static str = "shop.card.added.v1";
    fn key(&self) -> Option<String> {
        Some(self.customer.clone())
    }
}

pub fn card(customer: &str) -> CardAdded {
    CardAdded {
        customer: customer.to_owned(),
        pan: PAN.to_owned(),
    }
}

/// The keyring before rotation: `old` only.
pub fn old_keyring() -> Keyring {
    Keyring::parse(&format!("old={OLD_KEY_B64}")).unwrap()
}

/// The keyring after rotation: `old`, then `new` (which encrypts).
pub fn rotated_keyring() -> Keyring {
    Keyring::parse(&format!("old={OLD_KEY_B64}\nnew={NEW_KEY_B64}")).unwrap()
}

/// A publisher of `world` encrypting with `keyring`.
pub fn encrypting_publisher(world: &World, keyring: Keyring) -> Publisher {
    world
        .client
        .publisher()
        .with_encryption(Encryption::new(keyring))
}

/// The stored message at `sequence` of the world's stream: its headers as
/// text, its payload, and it decoded (still encrypted).
pub async fn stored(world: &World, sequence: u64) -> (String, Vec<u8>, Envelope) {
    let raw = world
        .stream()
        .await
        .get_raw_message(sequence)
        .await
        .unwrap();
    let envelope = jetevents::codec::decode(Some(&raw.headers), &raw.payload).unwrap();
    (format!("{:?}", raw.headers), raw.payload.to_vec(), envelope)
}

/// A `card` event of `customer` sealed by `encryption`, and its subject in
/// `world`.
pub fn sealed_card(world: &World, encryption: &Encryption, customer: &str) -> (String, Envelope) {
    let mut envelope = Envelope::from_event("/consume-tests", &card(customer)).unwrap();
    encryption.seal(&mut envelope).unwrap();
    let subject = format!(
        "{}.shop.card.added.v1.{customer}",
        world.client.subjects().env()
    );
    (subject, envelope)
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Runs a consumer from `builder` that records every `E` its handler
/// sees, and the record.
pub async fn collecting<E: jetevents::Event + Clone>(
    builder: jetevents::consume::ConsumerBuilder<()>,
) -> (
    crate::consume_common::Running,
    crate::consume_common::Log<E>,
) {
    let seen: crate::consume_common::Log<E> = crate::consume_common::Log::default();
    let consumer = builder
        .with_state(seen.clone())
        .handle(
            |event: E, ctx: jetevents::consume::Context<crate::consume_common::Log<E>>| async move {
                ctx.state().push(event);
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    (crate::consume_common::Running::start(consumer), seen)
}
