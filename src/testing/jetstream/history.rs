//! The settlement history: every delivery and settlement the engine saw,
//! on tokio's clock, for tests that assert what happened and when.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::message::{Advisory, DeliveryInfo, Settlement};
use super::MemoryJetStream;

/// One thing that happened to a message in a durable consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// When, on tokio's clock.
    pub at: Instant,
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// The delivery count it happened at (1 for the first delivery).
    pub deliveries: u64,
    /// What happened.
    pub action: Action,
}

/// What happened to a message, as the caller asked it (a settlement of a
/// delivery that is no longer pending is recorded too: the server would
/// receive it as well).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Handed to a caller of `next` or `try_next`.
    Delivered,
    /// Acknowledged.
    Acked,
    /// Negatively acknowledged: redelivery after the delay, at once with `None`.
    Naked {
        /// The delay asked for.
        delay: Option<Duration>,
    },
    /// Reported as still in progress.
    InProgress,
    /// Terminated.
    Terminated {
        /// The reason given, empty if none.
        reason: String,
    },
    /// Reached `max_deliver`: never delivered again.
    MaxDeliveries,
}

/// The engine's record, in the order things happened.
#[derive(Debug, Default)]
pub(crate) struct History {
    entries: Mutex<Vec<HistoryEntry>>,
}

impl History {
    fn push(&self, delivery: &DeliveryInfo, action: Action) {
        self.push_entry(HistoryEntry {
            at: Instant::now(),
            stream: delivery.stream.clone(),
            consumer: delivery.consumer.clone(),
            stream_sequence: delivery.stream_sequence,
            deliveries: delivery.delivered,
            action,
        });
    }

    fn push_entry(&self, entry: HistoryEntry) {
        // A test that panicked while recording leaves a whole entry or none.
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    pub(crate) fn delivered(&self, delivery: &DeliveryInfo) {
        self.push(delivery, Action::Delivered);
    }

    pub(crate) fn settled(&self, delivery: &DeliveryInfo, settlement: Settlement) {
        let action = match settlement {
            Settlement::Ack => Action::Acked,
            Settlement::Nak(delay) => Action::Naked { delay },
            Settlement::InProgress => Action::InProgress,
        };
        self.push(delivery, action);
    }

    pub(crate) fn terminated(&self, delivery: &DeliveryInfo, reason: &str) {
        self.push(
            delivery,
            Action::Terminated {
                reason: reason.to_owned(),
            },
        );
    }

    /// Records what an advisory says that no settlement does.
    pub(crate) fn advised(&self, advisory: &Advisory) {
        if let Advisory::MaxDeliveries {
            stream,
            consumer,
            stream_sequence,
            deliveries,
        } = advisory
        {
            self.push_entry(HistoryEntry {
                at: Instant::now(),
                stream: stream.clone(),
                consumer: consumer.clone(),
                stream_sequence: *stream_sequence,
                deliveries: *deliveries,
                action: Action::MaxDeliveries,
            });
        }
    }

    fn of(&self, stream: &str, consumer: &str) -> Vec<HistoryEntry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|entry| entry.stream == stream && entry.consumer == consumer)
            .cloned()
            .collect()
    }
}

impl MemoryJetStream {
    /// Every delivery and settlement of the durable `consumer` on `stream`
    /// so far, in order (kept after the consumer is deleted).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use bytes::Bytes;
    /// use jetevents::testing::{Action, ConsumerConfig, MemoryJetStream, StreamConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let js = MemoryJetStream::new();
    /// js.create_stream(StreamConfig::new("ORDERS", ["orders.>"]))?;
    /// js.create_consumer("ORDERS", ConsumerConfig::new("billing"))?;
    /// js.publish("orders.created", None, Bytes::from_static(b"{}"))?;
    /// js.next("ORDERS", "billing").await?.nak(Some(Duration::from_secs(5)))?;
    /// js.next("ORDERS", "billing").await?.ack()?;
    ///
    /// let actions: Vec<Action> = js
    ///     .history("ORDERS", "billing")
    ///     .into_iter()
    ///     .map(|entry| entry.action)
    ///     .collect();
    /// let nak = Action::Naked { delay: Some(Duration::from_secs(5)) };
    /// assert_eq!(actions, [Action::Delivered, nak, Action::Delivered, Action::Acked]);
    /// # Ok(()) }
    /// ```
    pub fn history(&self, stream: &str, consumer: &str) -> Vec<HistoryEntry> {
        self.shared.history.of(stream, consumer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use bytes::Bytes;
    use tokio::time::advance;

    use super::super::{ConsumerConfig, StreamConfig};
    use super::*;

    /// (seconds since `start`, stream sequence, deliveries, action) of each entry.
    fn timeline(js: &MemoryJetStream, start: Instant) -> Vec<(u64, u64, u64, Action)> {
        js.history("ORDERS", "billing")
            .into_iter()
            .map(|e| {
                let secs = (e.at - start).as_secs();
                (secs, e.stream_sequence, e.deliveries, e.action)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn progress_term_and_max_deliveries_are_recorded_on_tokio_time() {
        let start = Instant::now();
        let js = MemoryJetStream::new();
        js.create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
            .unwrap();
        let mut config = ConsumerConfig::new("billing");
        config.ack_wait = Duration::from_secs(10);
        config.max_deliver = 2;
        js.create_consumer("ORDERS", config).unwrap();
        for _ in 0..2 {
            js.publish("orders.created", None, Bytes::from_static(b"{}"))
                .unwrap();
        }

        let first = js.next("ORDERS", "billing").await.unwrap();
        advance(Duration::from_secs(4)).await;
        first.in_progress().unwrap();
        first.term_with_reason("bad order").unwrap();
        // The second is never settled: redelivered after the ack wait, then
        // given up on when pulled again after its second ack wait.
        drop(js.next("ORDERS", "billing").await.unwrap());
        drop(js.next("ORDERS", "billing").await.unwrap());
        assert!(js.try_next("ORDERS", "billing").is_none());
        advance(Duration::from_secs(10)).await;
        assert!(js.try_next("ORDERS", "billing").is_none());

        let terminated = Action::Terminated {
            reason: "bad order".to_owned(),
        };
        assert_eq!(
            timeline(&js, start),
            [
                (0, 1, 1, Action::Delivered),
                (4, 1, 1, Action::InProgress),
                (4, 1, 1, terminated),
                (4, 2, 1, Action::Delivered),
                (14, 2, 2, Action::Delivered),
                (24, 2, 2, Action::MaxDeliveries),
            ]
        );
        assert!(js.history("ORDERS", "other").is_empty());
    }
}
