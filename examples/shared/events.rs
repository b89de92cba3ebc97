//! Event types shared by the demo producer and consumer.

use serde::{Deserialize, Serialize};

/// An order was placed. `fate` lets the demo script one retry and one
/// dead letter: real events would not carry such a field.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order, also the subject's key token.
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: u64,
    /// What the demo consumer should do with it.
    #[serde(default)]
    pub fate: Fate,
}

/// How the demo consumer treats an order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Handled at once.
    #[default]
    Normal,
    /// Fails transiently on its first delivery, succeeds on the retry.
    FlakyOnce,
    /// Fails permanently: dead-lettered.
    Poison,
}

impl jetevents::Event for OrderPlaced {
    const TYPE: &'static str = "shop.order.placed.v1";

    fn key(&self) -> Option<String> {
        Some(self.order_id.clone())
    }
}

/// Name of the demo's stream.
pub const STREAM: &str = "SHOP";
/// Domain of the demo's events.
pub const DOMAIN: &str = "shop";
