//! The test kit: an in-memory JetStream for a service's own unit tests.
//!
//! Put `jetevents = { version = "…", features = ["testing"] }` in your
//! dev-dependencies. [`MemoryJetStream`] keeps streams and durable pull
//! consumers in memory and runs on tokio's clock (`tokio::time::Instant`,
//! `sleep_until`), so under `tokio::time::pause()` (or
//! `#[tokio::test(start_paused = true)]`) an ack wait of 30 seconds or a
//! backoff schedule up to an hour passes in microseconds.
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use jetevents::testing::{ConsumerConfig, MemoryJetStream, StreamConfig};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let js = MemoryJetStream::new();
//! js.create_stream(StreamConfig::new("ORDERS", ["orders.>"]))?;
//! js.create_consumer("ORDERS", ConsumerConfig::new("billing"))?;
//! js.publish("orders.created", None, Bytes::from_static(b"{}"))?;
//!
//! let first = js.next("ORDERS", "billing").await?;
//! first.nak(Some(Duration::from_secs(3600)))?;
//! // An hour later on tokio's paused clock: no real waiting.
//! let again = js.next("ORDERS", "billing").await?;
//! assert_eq!(again.info().delivered, 2);
//! again.ack()?;
//! # Ok(())
//! # }
//! ```
//!
//! It follows nats-server 2.15's rules where it implements something; the
//! server's function names are cited in the code. What it implements:
//! - streams with wildcard subjects, the overlap check between streams,
//!   idempotent create;
//! - publish with `Nats-Msg-Id` deduplication within the duplicate window (a
//!   duplicate answers with the original's sequence), `Nats-Expected-Stream`,
//!   `Nats-Expected-Last-Sequence`, `Nats-Expected-Last-Subject-Sequence` (with
//!   `Nats-Expected-Last-Subject-Sequence-Subject`), `Nats-Expected-Last-Msg-Id`,
//!   checked in the server's order, and `max_payload`;
//! - durable pull consumers with filters, deliver policy, ack wait, backoff,
//!   Nak with and without delay, in-progress, term, max deliver, max ack
//!   pending, delivery counts, ack floor and the pending counts of consumer
//!   info; the max-deliveries, terminated and nak advisories;
//! - for the [event store](crate::eventstore) on `Client::in_memory`, not as
//!   API of its own: atomic batches (all stored contiguously after the
//!   checks of a publish, or none; a stored id refuses the whole batch),
//!   direct gets of the last or next message on a subject filter, ordered
//!   reads from a sequence or a time, and KV buckets holding the latest
//!   value of each key with its revision: put, get, create, compare-and-set
//!   update and delete, entries expiring after the bucket's max age
//!   (snapshots, projection checkpoints and leases).
//!
//! # Where it differs from nats-server
//!
//! `tests/conformance.rs` runs the same cases against nats-server 2.15.1 and
//! this engine, and says there which of the differences below its cases
//! adapt to. Outside the engine, [`DeadLetters`](crate::consume::DeadLetters)
//! reads through NATS only: use [`TestKit::dead_letters`].
//! [`EphemeralConsumer`](crate::consume::EphemeralConsumer)s (core NATS queue
//! subscriptions) need a NATS connection: building one on an in-memory
//! client fails with `ConsumeErrorKind::Subscribe`. Attempts are counted by
//! deliveries (there is no attempts bucket), which is the same count unless
//! an event is redelivered without a failed handler run.
//!
//! - **No background timers.** Time-driven changes (an ack wait running out,
//!   a `max_deliver == 1` message leaving pending) happen when the consumer is
//!   looked at: by [`next`](MemoryJetStream::next) (which sleeps until the next
//!   deadline, so a waiting caller sees them on time), `try_next`,
//!   `consumer_info`, or a settlement. The server's timer fires 1 ms after a
//!   deadline; here a redelivery is due exactly at it.
//! - **Max deliveries** above 1 are detected, as on the server, when the
//!   exhausted message is next in line for redelivery and a caller is pulling;
//!   with nobody in `next`/`try_next` its advisory waits. As on the
//!   server, such a message leaves pending without moving the ack floor.
//! - **Only what is listed above.** No retention other than limits without
//!   limits (messages are never removed: no max age, max messages, max bytes,
//!   per-subject limits, discard, purge, rollup or message TTL), no mirrors or
//!   sources, no push or ephemeral or ordered consumers, ack policy always
//!   explicit, no deliver-last/by-time policies, no pull batches, max bytes or
//!   expiry (a pull is one message; `next` waits without limit), no paused or
//!   pinned consumers, no scheduled publishes, no KV history, watches or TTL,
//!   no Object Store,
//!   no clustering, no accounts or permissions.
//! - **Publishing** answers at once; it never times out and has no "outcome
//!   unknown". A subject no stream captures is
//!   [`NoStream`](PublishErrorKind::NoStream) (the server does not answer; the
//!   client sees no responders). A subject with wildcards or empty tokens is
//!   refused as [`InvalidSubject`](PublishErrorKind::InvalidSubject).
//! - **Settling a delivery of a deleted consumer** is an [`AckError`]; on the
//!   server the ack goes nowhere and, without a double ack, nobody notices.
//! - **Consumer updates** refuse only changes of the deliver policy or start
//!   sequence (the only fixed settings the engine has); a changed filter
//!   applies to messages not delivered yet.
//! - **Names** are checked as the server's API subjects need them (no `.`,
//!   `*`, `>`, whitespace or path separators); the server's length limits are
//!   not checked.
//! - The duplicate window forgets an id exactly when the window has passed;
//!   the server purges on a timer, so an id may live slightly longer there.

mod jetstream;
mod kit;
mod report;
mod transport;

pub use jetstream::*;
pub use kit::{NotIdle, RunningConsumer, TestKit, DEFAULT_IDLE_LIMIT};
pub use report::{Report, Retried, Retry};
