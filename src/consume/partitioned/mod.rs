//! Partitioned consumer groups: events of one key handled in order, one at
//! a time, while different keys run in parallel across a service's
//! instances.
//!
//! ```no_run
//! use jetevents::consume::{Consumer, Context, HandlerError};
//! use jetevents::consume::partitioned::{partitioned_stream, PartitionedConfig, PartitionedConsumer};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Deposited { account: String, cents: i64 }
//! # impl jetevents::Event for Deposited {
//! #     const TYPE: &'static str = "ledger.account.deposited.v1";
//! #     fn key(&self) -> Option<String> { Some(self.account.clone()) }
//! # }
//! async fn on_deposit(event: Deposited, _ctx: Context) -> Result<(), HandlerError> {
//!     // Runs for one account at a time, in publish order.
//!     Ok(())
//! }
//!
//! # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! client.ensure_stream(&partitioned_stream(client.subjects(), "LEDGER", "ledger", 16)?).await?;
//! let handlers = Consumer::builder(&client, "balances")
//!     .stream("LEDGER")
//!     .handle(on_deposit);
//! PartitionedConsumer::build(handlers, PartitionedConfig::new(16))
//!     .await?
//!     .run()
//!     .await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! The stream ([`partitioned_stream`]) stores each event under
//! `{partition}.{subject}`, the partition a hash of the event's key (the
//! last subject token) modulo P. Each partition has its own durable
//! consumer, `{group}-p{n}`, filtered on its token, with
//! `max_ack_pending = 1`: the server hands out the partition's next event
//! only once the previous one is acked or terminated, so events of one key
//! are handled in stream order and never two at a time. The consumer is a
//! pinned-client priority group (ADR-42): one member's pulls are served,
//! the others' wait, so a partition is consumed by one member at a time
//! even while members disagree about who owns it.
//!
//! Handlers, layers, retry policy, dead letters and the other settings come
//! from the [`ConsumerBuilder`] passed to
//! [`PartitionedConsumer::build`]; a partition's consumer overrides the
//! concurrency (1), `max_ack_pending` (1), the prefetch (64) and the pull
//! expiry (at most a third of the [pinned TTL](PartitionedConfig::pinned_ttl)),
//! and keeps only the filters that can match a keyed subject.
//! A partition consumer made by an older version, which also filtered on
//! unkeyed subjects, has those filters dropped when a member takes the
//! partition (they match nothing: no event is skipped).
//!
//! # Throughput
//!
//! A member consumes each of its partitions in its own task: P partitions
//! are P ordered streams handled side by side. Within a partition the
//! server lets one event out at a time, so each event costs a round trip
//! (its ack, then the next delivery); what the member saves is the rest:
//! one pull asks for 64 events, which the server sends one by one, each
//! after the previous one's ack, so no pull request is sent per event.
//! Order does not depend on the pull's size: the server counts a delivered,
//! unacked event (Naked with a delay too) against `max_ack_pending = 1`
//! until it is acked or terminated, and serves a redelivery before any new
//! event, so a retried or redelivered event is always the partition's next
//! one, whichever member's pull it goes to.
//!
//! # Rebalancing protocol
//!
//! 1. **Membership.** A member joins by writing its id (a UUIDv7, so ids
//!    sort by join time) in the KV bucket of the group on its stream,
//!    `jetevents-pcg-{stream length}-{stream}-{group}`, whose
//!    entries expire after the [member TTL](PartitionedConfig::member_ttl),
//!    and rewrites it every third of the TTL. The entry's value says what the
//!    member handles and what its partitions need (see
//!    [rolling deploys](#rolling-deploys)).
//! 2. **Assignment.** Each member watches the bucket and keeps the latest
//!    entry of every member. At each heartbeat, once the watch has delivered
//!    its own renewal (so everything stored before it), it takes as live the
//!    entries renewed less than the member TTL before that renewal, by the
//!    server's clock, and not deleted: those the bucket holds then. A steady
//!    heartbeat is one request, the renewal, whatever the number of members
//!    (the renewals reach the others by the watches). If the renewal fails or
//!    the watch does not deliver it in time, the member keeps its partitions
//!    and opens the watch again at the next heartbeat. It then
//!    computes the owner of every partition by rendezvous hashing with
//!    bounded loads: each (partition, member) pair has a fixed score, and
//!    partitions go to their best-scoring member with room, members owning
//!    ⌊P/n⌋ or ⌈P/n⌉ partitions. Every member computes the same table from
//!    the same list; none is elected and no table is stored. A partition's
//!    owner follows the scores, not positions in the list, so a join or a
//!    leave moves little more than the partitions that must move (the
//!    newcomer's share, the leaver's partitions): about 1.3 times those, where
//!    a modulo over the sorted list moves about 3 times and contiguous blocks
//!    (orbit.go's `pcgroups`) about 2.5 times.
//! 3. **Giving a partition away.** A member stops pulling the partition,
//!    lets its in-flight event finish (acked on success, Naked after the
//!    consumer's shutdown grace), then unpins the partition's consumer so
//!    the new owner is served at once.
//! 4. **Taking a partition.** A member starts pulling as soon as it computes
//!    that it owns it. Until the previous owner has released it (step 3)
//!    its pulls wait on standby, and the previous owner's in-flight event
//!    holds the next one back anyway (`max_ack_pending = 1`).
//! 5. **Leaving.** On shutdown a member releases all its partitions and
//!    deletes its entry: the others take over at their next heartbeat.
//! 6. **Failover.** A member that dies stops renewing its entry; after the
//!    member TTL the others reassign its partitions. Its pins lapse after the
//!    [pinned TTL](PartitionedConfig::pinned_ttl) and its unacked event is
//!    redelivered after the ack wait, to the new owner, before any later one.
//!
//! Members that briefly disagree (one has not seen a join yet) may both pull
//! a partition; the pin serves one of them, and `max_ack_pending = 1` keeps
//! even a stale pin from handing out a second event of the partition.
//!
//! # Rolling deploys
//!
//! During a deploy a newer version may handle a type the older one does not.
//! An event of that type in a partition an older member owns is left by it
//! ([`UnhandledPolicy::Leave`](crate::consume::UnhandledPolicy)), and no other
//! member could take it: the partition is pinned to the owner and
//! `max_ack_pending = 1` holds the rest of it back. So the partition moves:
//!
//! 1. Each member writes in its membership entry the types and type patterns
//!    its handlers take.
//! 2. An owner that leaves an event of type T in partition p records, in its
//!    entry, that p needs T. It keeps that for its life, also once p has
//!    moved, so p stays with a member that handles T; and whoever owns p
//!    copies p's needs into its own entry, so they outlive the member that
//!    recorded them (an older member that restarts comes back under a new
//!    id, without them, and would otherwise get p back and stall it again at
//!    the next event of type T).
//! 3. In every member's table, a partition that needs types goes to the
//!    best-scoring member among those handling the most of them (all of them,
//!    usually), unless its owner is one; the other partitions keep their
//!    owners, so loads are uneven until the older members leave (needs that
//!    every member handles move nothing). When no live member handles the
//!    types, the table is the plain one and the owner's unhandled policy
//!    decides, as before. Partitions that need types do not count against
//!    the load bounds on purpose: counting them would move more of the
//!    others during the deploy, and members of the previous version, which
//!    would not count them, would compute other owners than the newer ones;
//!    a partition each side believes the other owns is pulled by no one.
//! 4. The owner gives p away as in a rebalance: the left event is Naked, so
//!    it is the partition's next delivery, now to the new owner, and order
//!    holds. The move takes a heartbeat or two and the Nak's delay (at most
//!    5 s).
//!
//! Members of a version before this protocol write no types: the others read
//! them as handling nothing and needing nothing; they themselves compute the
//! plain table, so they may keep pulling a partition that moved (the pin
//! and `max_ack_pending = 1` still keep it to one event at a time).
//!
//! # Order under retries
//!
//! A transient failure blocks the event's **partition**, not only its key:
//! a JetStream consumer delivers in stream order, and letting other keys of
//! the partition pass would mean buffering them in the client and tracking
//! per-key state across members. The event is Naked with the retry policy's
//! delay; with `max_ack_pending = 1` the server holds the rest of the
//! partition until it is redelivered and acked. After the last attempt it
//! goes to the dead-letter stream, its entry carrying
//! [`HELD_BEHIND`](crate::consume::dead_letter::HELD_BEHIND) (how many later
//! events of its partition waited behind it), is terminated, and the
//! partition moves on. Keep retry delays short: every key of the partition
//! waits through them.

mod assignment;
mod config;
mod error;
mod member;
mod membership;
mod needs;
mod stream;
mod upgrade;

use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;

use crate::error::Error;

use super::builder::Prepared;
use super::settings::Pinned;
use super::ConsumerBuilder;

pub use config::PartitionedConfig;
pub use error::{PartitionedError, PartitionedErrorKind};
pub use member::MEMBER_ATTRIBUTE;
pub(crate) use needs::UnhandledTypes;
pub use stream::partitioned_stream;

/// The priority group every partition consumer's pulls name.
const PIN_GROUP: &str = "owner";
/// Events one pull of a partition asks for (served one at a time).
const PULL_BATCH: usize = 64;
/// Delays between attempts to join while the membership bucket is
/// unavailable.
const JOIN_RETRY_FIRST: Duration = Duration::from_millis(100);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(2);

/// A member of a partitioned group: start one per instance of the service
/// with the same handlers and group name.
pub struct PartitionedConsumer<S = ()> {
    prepared: Prepared<S>,
    group: String,
    stream: String,
    config: PartitionedConfig,
    /// The stream's replicas: the membership bucket gets as many.
    replicas: usize,
}

impl<S> std::fmt::Debug for PartitionedConsumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedConsumer")
            .field("group", &self.group)
            .field("stream", &self.stream)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> PartitionedConsumer<S> {
    /// Checks the settings and that the builder's stream (required) is
    /// partitioned into `config.partitions`.
    pub async fn build(
        builder: ConsumerBuilder<S>,
        config: PartitionedConfig,
    ) -> Result<Self, PartitionedError> {
        let invalid = |reason: String| Error::new(PartitionedErrorKind::InvalidConfig(reason));
        config.validate().map_err(invalid)?;
        let prepared = builder
            .prepare()
            .map_err(|err| Error::with_source(PartitionedErrorKind::Consumer, err))?;
        if prepared.settings.priority.is_some() {
            // Each partition's consumer is pinned to one member: a priority
            // group of another policy on the same consumer cannot also hold.
            return Err(invalid(
                "a partitioned group pins each partition to one member; it takes no \
                 ConsumerBuilder::priority"
                    .to_owned(),
            ));
        }
        if stream::partition_filters(&prepared.filters, 0).is_empty() {
            // A consumer without a filter would take every event.
            return Err(invalid(
                "a partitioned group's handlers take keyed events only: none of its \
                 filters can match a keyed subject"
                    .to_owned(),
            ));
        }
        let Some(stream) = prepared.stream.clone() else {
            return Err(invalid(
                "a partitioned group names its stream (ConsumerBuilder::stream)".to_owned(),
            ));
        };
        membership::bucket(&stream, &prepared.group)?;
        let info = super::runner::get_stream(&prepared.client, &stream)
            .await
            .map_err(|err| Error::with_source(PartitionedErrorKind::Consumer, err))?;
        let stream_config = &info.cached_info().config;
        if !stream::partitions_keys(stream_config.subject_transform.as_ref(), config.partitions) {
            return Err(Error::new(PartitionedErrorKind::NotPartitioned {
                stream,
                partitions: config.partitions,
            }));
        }
        Ok(Self {
            group: prepared.group.clone(),
            replicas: stream_config.num_replicas,
            prepared,
            stream,
            config,
        })
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Joins the group and consumes the partitions this member is assigned
    /// until `signal` completes; then releases them (in-flight events
    /// finished) and leaves. While the membership bucket is unavailable
    /// (a cluster electing its leaders) it keeps trying to join; the error
    /// is for a group or stream name no bucket can have.
    pub async fn run_until<F>(self, signal: F) -> Result<(), PartitionedError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut signal = signal.boxed();
        let mut retry_in = JOIN_RETRY_FIRST;
        let entry = self.entry(needs::Needs::new());
        let membership = loop {
            let joining = membership::Membership::join(
                &self.prepared.client,
                &self.stream,
                &self.group,
                self.config.member_ttl,
                self.replicas,
                &entry,
            );
            match joining.await {
                Ok(membership) => break membership,
                Err(err) if matches!(err.kind(), PartitionedErrorKind::InvalidConfig(_)) => {
                    return Err(err)
                }
                // A cluster electing leaders or placing the new bucket:
                // wait for it rather than give up.
                Err(err) => {
                    tracing::warn!(consumer = %self.group, error = %err, "cannot join the partitioned group yet; retrying");
                    tokio::select! {
                        () = &mut signal => return Ok(()),
                        () = tokio::time::sleep(retry_in) => {}
                    }
                    retry_in = (retry_in * 2).min(JOIN_RETRY_MAX);
                }
            }
        };
        member::run(self, membership, signal).await;
        Ok(())
    }

    /// Runs until Ctrl-C or SIGTERM ([`shutdown_signal`](super::shutdown_signal)).
    pub async fn run(self) -> Result<(), PartitionedError> {
        self.run_until(super::shutdown_signal()).await
    }

    /// This member's membership entry: the types it handles, what
    /// partitions need.
    fn entry(&self, needs: needs::Needs) -> membership::MemberEntry {
        membership::MemberEntry {
            handles: self.prepared.handlers.routes().handled(),
            needs,
        }
    }

    /// The consumer of one partition: the group's handlers and settings,
    /// its filters under the partition's token, one event at a time; the
    /// types it leaves unhandled are recorded in `unhandled`.
    fn partition(&self, partition: u16, unhandled: UnhandledTypes) -> Prepared<S> {
        let mut prepared = self.prepared.clone();
        prepared.group = member::partition_group(&self.group, partition);
        prepared.filters = stream::partition_filters(&self.prepared.filters, partition);
        let settings = &mut prepared.settings;
        settings.concurrency = 1;
        // The server still hands out one event at a time (max_ack_pending),
        // each on the next ack: a pull of several saves a pull request per
        // event without letting a second event out.
        settings.prefetch = Some(PULL_BATCH);
        settings.max_ack_pending = Some(1);
        // The pin lapses when its client stops pulling: pull often enough.
        settings.pull_expiry = settings
            .pull_expiry
            .min(self.config.pinned_ttl / 3)
            .max(Duration::from_millis(100));
        settings.pinned = Some(Pinned {
            group: PIN_GROUP.to_owned(),
            ttl: self.config.pinned_ttl,
            unhandled,
        });
        prepared
    }

    /// Releases the server's pin on a partition's consumer.
    async fn unpin(&self, partition: u16) -> Result<(), crate::error::BoxError> {
        let jetstream = &self
            .prepared
            .client
            .nats_transport("unpinning a partition")?
            .jetstream;
        let stream = jetstream.get_stream(&self.stream).await?;
        stream
            .unpin_consumer(&member::partition_group(&self.group, partition), PIN_GROUP)
            .await?;
        Ok(())
    }
}
