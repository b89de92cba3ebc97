//! How many handler runs of an event have failed, kept where every instance
//! of the group can read it.
//!
//! The server counts deliveries, and a delivery is not an attempt: an event
//! Naked at shutdown before its handler ran, left for another version of the
//! service, or redelivered after a lost connection has not failed. So the
//! retry policy counts failed handler runs, in a KV bucket keyed by group,
//! stream and stream sequence:
//!
//! - a first delivery has no failed run: nothing is read;
//! - a transient failure writes the new count before its Nak, so the next
//!   delivery (on any instance) reads it;
//! - an event that ends (acked or dead-lettered) after a failure has its
//!   record deleted; records of events that vanish otherwise expire with the
//!   bucket's maximum age.
//!
//! Only failures and redeliveries touch the bucket. When it cannot be opened
//! (the user may not create KV buckets) the runner says so once and counts
//! deliveries instead, as JetStream does.

use std::time::Duration;

use async_nats::jetstream::kv;

use crate::client::Client;

/// The bucket shared by every group of the account.
pub const BUCKET: &str = "jetevents_attempts";
/// How long a record outlives its last write: longer than any sensible
/// retry schedule, short enough that records of purged events go away.
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The failed-run records of one group on one stream.
pub(crate) struct FailedRuns {
    store: Option<kv::Store>,
    /// `{group}.{stream}.`, in the characters KV keys allow.
    prefix: String,
}

impl FailedRuns {
    /// Opens (or creates, with the consumed stream's `replicas`, so it
    /// survives what the stream survives) the bucket. Never fails: without
    /// it, deliveries are counted instead.
    pub(crate) async fn open(client: &Client, stream: &str, group: &str, replicas: usize) -> Self {
        let prefix = format!("{}.{}.", key_token(group), key_token(stream));
        // On the in-memory JetStream, deliveries are counted (see
        // `crate::testing`).
        let Ok(nats) = client.nats_transport("the attempts bucket") else {
            return Self {
                store: None,
                prefix,
            };
        };
        let jetstream = &nats.jetstream;
        let store = match jetstream.get_key_value(BUCKET).await {
            Ok(store) => Ok(store),
            Err(_) => {
                jetstream
                    .create_key_value(kv::Config {
                        bucket: BUCKET.to_owned(),
                        description: "jetevents: failed handler runs of events being retried"
                            .to_owned(),
                        max_age: MAX_AGE,
                        history: 1,
                        num_replicas: replicas.max(1),
                        ..Default::default()
                    })
                    .await
            }
        };
        let store = match store {
            Ok(store) => Some(store),
            Err(err) => {
                tracing::warn!(
                    consumer = %group,
                    bucket = BUCKET,
                    error = %err,
                    "attempts bucket unavailable; attempts are counted by deliveries"
                );
                None
            }
        };
        Self { store, prefix }
    }

    /// Failed handler runs before this delivery.
    pub(crate) async fn before(&self, stream_sequence: u64, delivered: u64) -> u32 {
        let by_deliveries = u32::try_from(delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        if delivered <= 1 {
            return 0;
        }
        let Some(store) = &self.store else {
            return by_deliveries;
        };
        match store.get(self.key(stream_sequence)).await {
            Ok(Some(value)) => std::str::from_utf8(&value)
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(by_deliveries),
            Ok(None) => 0,
            Err(err) => {
                // Counting deliveries can only dead-letter sooner, never
                // retry without bound.
                tracing::warn!(
                    stream_sequence,
                    error = %err,
                    "failed runs could not be read; counting deliveries for this event"
                );
                by_deliveries
            }
        }
    }

    /// Records `failed` handler runs, before the Nak that asks for the next.
    pub(crate) async fn record(&self, stream_sequence: u64, failed: u32) {
        let Some(store) = &self.store else { return };
        if let Err(err) = store
            .put(self.key(stream_sequence), failed.to_string().into())
            .await
        {
            // The next delivery reads the older count: one attempt more,
            // still bounded by the consumer's max_deliver.
            tracing::warn!(
                stream_sequence,
                failed,
                error = %err,
                "failed run could not be recorded"
            );
        }
    }

    /// Drops the record of an event that will not be retried.
    pub(crate) async fn forget(&self, stream_sequence: u64) {
        let Some(store) = &self.store else { return };
        if let Err(err) = store.purge(self.key(stream_sequence)).await {
            tracing::warn!(
                stream_sequence,
                error = %err,
                "failed-run record could not be deleted; it expires with the bucket's max age"
            );
        }
    }

    fn key(&self, stream_sequence: u64) -> String {
        format!("{}{stream_sequence}", self.prefix)
    }
}

/// `name` in the characters a KV key token may hold.
fn key_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tokens_keep_names_readable_and_safe() {
        assert_eq!(key_token("billing-v2_a"), "billing-v2_a");
        assert_eq!(key_token("ORDERS.EU"), "ORDERS_EU");
        assert_eq!(key_token("a b*>"), "a_b__");
    }
}
