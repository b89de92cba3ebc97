//! The consumer's policies a user chooses: unhandled types, acks, server
//! backoff, and the server's delivery margin.

use std::time::Duration;

#[cfg(doc)]
use super::RetryPolicy;

/// What an instance does with an event of a type it has no handler for.
///
/// Such events reach an instance when the group's filter is wider than its
/// own handlers: during a rolling deploy a newer version of the service
/// asked for one more type (see the [group filter](super#rolling-deploys)),
/// a pattern or extra filter subject matched, or a handler was removed.
/// Another instance of the group may well handle it, so by default it is
/// left for one: Naked with a delay that grows with its deliveries (250 ms,
/// 500 ms, 1 s... up to 5 s), counted in `jetevents.consume.unhandled` and
/// never against the event's attempts.
///
/// In a [partitioned group](super::partitioned#rolling-deploys) no other
/// instance can take an event its partition's owner leaves (the partition is
/// pinned to the owner): the partition moves to a member that handles the
/// type, and the policy applies only while no live member does.
///
/// Acking or dead-lettering such events is a deliberate choice, made after a
/// wait long enough for a rolling deploy: the wait counts the delays the
/// event has been left for (its first delivery to the group counts as zero),
/// so `AckAfter(Duration::ZERO)` acks at once.
///
/// An event left for others still uses deliveries: the consumer's
/// `max_deliver` (default: the retry policy's attempts plus
/// [`DELIVERY_MARGIN`]) bounds how long it waits; at that bound the server
/// gives up and the event is dead-lettered `undeliverable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnhandledPolicy {
    /// Leave it for an instance that handles it (default).
    #[default]
    Leave,
    /// Ack it once it has been left for others this long: this group is
    /// not interested.
    AckAfter(Duration),
    /// Dead-letter it with reason `unhandled` once it has been left for
    /// others this long.
    DeadLetterAfter(Duration),
}

/// Deliveries the server allows beyond the retry policy's attempts by
/// default: deliveries that were not failed handler runs (shutdowns, lost
/// connections, events left for another version) use them, not attempts.
pub const DELIVERY_MARGIN: i64 = 100;

/// How a handled event is acked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// Send the ack and move on (default). A lost ack means a redelivery.
    #[default]
    Ack,
    /// Wait for the server to confirm the ack (double ack). Use it with
    /// handlers whose side effects must happen at most once: an unconfirmed
    /// ack is reported on the span instead of silently ignored.
    Confirmed,
}

/// The server-side backoff of the durable consumer: how long the server
/// waits before redelivering an event that was neither acked nor Naked (the
/// instance crashed or lost its connection).
///
/// Off by default, because a backoff also lengthens every Nak delay:
/// nats-server (2.15.1, measured by `tests/consume_deployments.rs`'s rolling
/// deploy before this default changed) times a Naked event against the
/// backoff entry of its delivery instead of the ack wait, so a Nak asking
/// for `d` after delivery `n` comes back after `d + backoff[n] - ack_wait`.
/// With the derived backoff and the default retry policy that roughly
/// doubled every retry delay.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum ServerBackoff {
    /// From the retry policy: [`RetryPolicy::server_backoff`]. Nak delays
    /// grow by the difference between an entry and the ack wait (see above).
    Derived,
    /// None (default): a delivery that is neither acked nor Naked comes back
    /// after the ack wait.
    #[default]
    Off,
    /// These delays, one per delivery (the last repeats).
    Custom(Vec<Duration>),
}
