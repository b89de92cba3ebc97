//! Who is in the group: one KV entry per live member, renewed by its
//! heartbeat and removed by the bucket's age limit when the member dies.
//! The entry says which event types the member handles and which types
//! partitions need (see [`needs`](super::needs)).
//!
//! Each member follows the bucket with a watch rather than reading every
//! entry at every heartbeat (n + 1 requests per member, n² per group). An
//! entry the age limit removes leaves no trace in a watch (a bucket without
//! limit markers, which older versions' buckets are), so the member applies
//! the limit itself: the watch gives each renewal's storage time, by the
//! server's clock, and the member's own renewal says what time it is there.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::datetime::DateTime;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::{BoxError, Error};

use super::needs::Needs;
use super::{PartitionedError, PartitionedErrorKind};

/// What a member's entry says about it. Older versions wrote `alive`: read
/// as a member that handles nothing known and needs nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberEntry {
    /// The types and type patterns the member's handlers take, sorted.
    #[serde(default)]
    pub handles: Vec<String>,
    /// The types partitions need that their owner, this member, left unhandled.
    #[serde(default)]
    pub needs: Needs,
}

impl MemberEntry {
    /// Whether the member handles events of `event_type`.
    pub(super) fn handles(&self, event_type: &str) -> bool {
        self.handles
            .iter()
            .any(|handled| crate::consume::router::type_matches(handled, event_type))
    }

    fn parse(value: &[u8]) -> Self {
        serde_json::from_slice(value).unwrap_or_default()
    }
}

/// Bound on one membership request: a member that cannot reach the bucket
/// keeps its partitions and tries again at the next heartbeat.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// This member's entry in its group's bucket, and its view of the others'.
pub(super) struct Membership {
    store: kv::Store,
    me: String,
    /// The bucket's age limit: how long an entry outlives its last renewal.
    ttl: Duration,
    /// Kept by a watch on the bucket instead of reading every entry at every
    /// heartbeat; `None` until opened, and again after it failed.
    view: Option<View>,
}

/// The bucket's watch and what it delivered.
struct View {
    watch: kv::Watch,
    members: Members,
}

/// The members' latest entries, as the bucket's watch delivered them.
#[derive(Default)]
struct Members(BTreeMap<String, Seen>);

/// A member's latest entry.
struct Seen {
    /// When the server stored it, by the clock its age limit uses.
    created: DateTime,
    value: Bytes,
    entry: MemberEntry,
}

/// The bucket of a group on a stream: its entries live as long as the
/// member TTL. The partitions' consumers are the stream's, so are the
/// members: a group of the same name on another stream (another
/// environment, a test) is another group. The stream's length keeps
/// `{stream}-{group}` unambiguous when either holds a '-'.
pub(super) fn bucket(stream: &str, group: &str) -> Result<String, PartitionedError> {
    let allowed = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if allowed(group) && allowed(stream) {
        Ok(format!("jetevents-pcg-{}-{stream}-{group}", stream.len()))
    } else {
        Err(Error::new(PartitionedErrorKind::InvalidConfig(format!(
            "group {group:?} on stream {stream:?}: a partitioned group's name and stream have \
             letters, digits, '-' and '_' only"
        ))))
    }
}

impl Membership {
    /// Opens (or creates) the group's bucket and enters this member.
    pub(super) async fn join(
        client: &Client,
        stream: &str,
        group: &str,
        ttl: Duration,
        replicas: usize,
        entry: &MemberEntry,
    ) -> Result<Self, PartitionedError> {
        let unavailable = |err: BoxError| Error::with_source(PartitionedErrorKind::Membership, err);
        let bucket = bucket(stream, group)?;
        let jetstream = &client
            .nats_transport("a partitioned group's membership")
            .map_err(|err| unavailable(err.into()))?
            .jetstream;
        // Another member may be creating it: its get then succeeds on the
        // caller's next attempt.
        let store = match jetstream.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => jetstream
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: format!(
                        "jetevents: live members of partitioned group {group} on {stream}"
                    ),
                    max_age: ttl,
                    history: 1,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|err| unavailable(err.into()))?,
        };
        let membership = Self {
            store,
            // Unique to this run of the member: a restarted member is a new one.
            me: uuid::Uuid::now_v7().simple().to_string(),
            ttl,
            view: None,
        };
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            put(&membership.store, &membership.me, entry),
        )
        .await
        .map_err(|elapsed| unavailable(elapsed.into()))?
        .map_err(unavailable)?;
        Ok(membership)
    }

    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// Renews this member's entry and returns the live members and their
    /// entries, this one included (as `mine`, whatever the bucket holds).
    ///
    /// Live means what the bucket holds when the renewal is stored: entries
    /// renewed less than the TTL before it, by the server's clock, and not
    /// deleted. The watch delivers every renewal in stream order, so once it
    /// has delivered this one, the view holds everything stored before it;
    /// a steady heartbeat is one request (the renewal) whatever the number of
    /// members. An error (the renewal failed, the watch did not deliver it in
    /// time) says nothing about the others: the caller keeps its partitions.
    pub(super) async fn renew(
        &mut self,
        mine: &MemberEntry,
    ) -> Result<BTreeMap<String, MemberEntry>, BoxError> {
        let renewing = async {
            if self.view.is_none() {
                self.view = Some(View::open(&self.store).await?);
            }
            let revision = put(&self.store, &self.me, mine).await?;
            let view = self
                .view
                .as_mut()
                .ok_or("the membership watch is not open")?;
            let renewed = view.follow_to(revision).await?;
            Ok::<_, BoxError>(view.members.live(renewed - self.ttl))
        };
        let live = tokio::time::timeout(REQUEST_TIMEOUT, renewing)
            .await
            .map_err(BoxError::from)
            .and_then(|live| live);
        let mut members = match live {
            Ok(members) => members,
            Err(err) => {
                // Opened again from the bucket's current entries next time.
                self.view = None;
                return Err(err);
            }
        };
        members.insert(self.me.clone(), mine.clone());
        Ok(members)
    }

    /// Leaves the group: the others take its partitions at their next
    /// heartbeat instead of after the TTL.
    pub(super) async fn leave(self) {
        if let Err(err) = tokio::time::timeout(REQUEST_TIMEOUT, self.store.purge(&self.me))
            .await
            .map_err(BoxError::from)
            .and_then(|purged| purged.map_err(BoxError::from))
        {
            tracing::warn!(member = %self.me, error = %err, "could not leave the partitioned group; the others wait for its TTL");
        }
    }
}

/// Writes member `me`'s entry; returns its revision. Not a method: the
/// watch a `Membership` holds is not `Sync`, so no `&Membership` may be held
/// across an await of a member's (spawned) future.
async fn put(store: &kv::Store, me: &str, entry: &MemberEntry) -> Result<u64, BoxError> {
    let value = serde_json::to_vec(entry)?;
    Ok(store.put(me, value.into()).await?)
}

impl View {
    /// Watches every key of the bucket, starting from its current entries.
    async fn open(store: &kv::Store) -> Result<Self, BoxError> {
        Ok(Self {
            watch: store.watch_with_history(">").await?,
            members: Members::default(),
        })
    }

    /// Applies what the watch delivers until it reaches `revision`, this
    /// member's renewal; returns when the server stored that renewal.
    async fn follow_to(&mut self, revision: u64) -> Result<DateTime, BoxError> {
        loop {
            let entry = match self.watch.next().await {
                Some(Ok(entry)) => entry,
                // A missed idle heartbeat: the watch recreates its consumer
                // from the last delivered revision by itself.
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "membership watch interrupted; it resumes");
                    continue;
                }
                None => return Err("the membership watch ended".into()),
            };
            // Delivered in stream order: this revision (the renewal, or a
            // later one if the renewal was gone before the watch reached it)
            // comes after everything stored before the renewal.
            let reached = (entry.revision >= revision).then_some(entry.created);
            self.members.apply(entry);
            if let Some(stored) = reached {
                return Ok(stored);
            }
        }
    }
}

impl Members {
    fn apply(&mut self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match self.0.get_mut(&entry.key) {
                // Most renewals repeat the entry: parsed again only if not.
                Some(seen) if seen.value == entry.value => seen.created = entry.created,
                _ => {
                    let seen = Seen {
                        created: entry.created,
                        entry: MemberEntry::parse(&entry.value),
                        value: entry.value,
                    };
                    self.0.insert(entry.key, seen);
                }
            },
            // Left the group.
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&entry.key);
            }
        }
    }

    /// The members renewed after `oldest`, the others dropped: the bucket's
    /// age limit removed (or is removing) their entries.
    fn live(&mut self, oldest: DateTime) -> BTreeMap<String, MemberEntry> {
        self.0.retain(|_, seen| seen.created > oldest);
        self.0
            .iter()
            .map(|(member, seen)| (member.clone(), seen.entry.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_older_members_entry_handles_nothing_and_needs_nothing() {
        assert_eq!(MemberEntry::parse(b"alive"), MemberEntry::default());
        assert_eq!(MemberEntry::parse(b""), MemberEntry::default());
        assert_eq!(MemberEntry::parse(b"{}"), MemberEntry::default());
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let entry = MemberEntry {
            handles: vec![
                "bank.account.*".to_owned(),
                "bank.card.issued.v1".to_owned(),
            ],
            needs: [(3, ["bank.loan.granted.v1".to_owned()].into())].into(),
        };
        let written = serde_json::to_vec(&entry).unwrap_or_default();
        assert_eq!(MemberEntry::parse(&written), entry);
        assert!(entry.handles("bank.account.opened.v1"));
        assert!(entry.handles("bank.card.issued.v1"));
        assert!(!entry.handles("bank.loan.granted.v1"));
    }

    /// An entry the watch delivers: `key` stored at `second` (server clock).
    fn stored(key: &str, second: i128, operation: kv::Operation, value: &[u8]) -> kv::Entry {
        kv::Entry {
            bucket: "b".to_owned(),
            key: key.to_owned(),
            value: Bytes::copy_from_slice(value),
            revision: 1,
            delta: 0,
            created: async_nats::datetime::from_nanos(second * 1_000_000_000).unwrap(),
            operation,
            seen_current: true,
        }
    }

    #[test]
    fn members_not_renewed_within_the_ttl_or_gone_are_not_live() {
        let mut members = Members::default();
        let handles = br#"{"handles":["a.b.c.v1"]}"#;
        members.apply(stored("a", 100, kv::Operation::Put, handles));
        members.apply(stored("b", 100, kv::Operation::Put, b"alive"));
        members.apply(stored("c", 100, kv::Operation::Put, b"{}"));
        members.apply(stored("d", 100, kv::Operation::Put, b"{}"));
        members.apply(stored("e", 100, kv::Operation::Put, b"{}"));
        // Renewed later (a's entry changed), left; e not renewed.
        members.apply(stored("a", 104, kv::Operation::Put, b"{}"));
        members.apply(stored("b", 105, kv::Operation::Put, b"alive"));
        members.apply(stored("c", 101, kv::Operation::Purge, b""));
        members.apply(stored("d", 102, kv::Operation::Delete, b""));
        let oldest = async_nats::datetime::from_nanos(103 * 1_000_000_000).unwrap();
        let live = members.live(oldest);
        assert_eq!(live.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(live["a"], MemberEntry::default());
        let later = async_nats::datetime::from_nanos(104 * 1_000_000_000).unwrap();
        assert_eq!(members.live(later).keys().collect::<Vec<_>>(), ["b"]);
    }
}
