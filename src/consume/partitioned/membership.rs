//! Who is in the group: one KV entry per live member, renewed by its
//! heartbeat and removed by the bucket's age limit when the member dies.
//! The entry says which event types the member handles and which types
//! partitions need (see [`needs`](super::needs)).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::TryStreamExt;
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

/// This member's entry in its group's bucket.
pub(super) struct Membership {
    store: kv::Store,
    me: String,
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
        };
        membership.beat(entry).await.map_err(unavailable)?;
        Ok(membership)
    }

    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// Renews this member's entry.
    pub(super) async fn beat(&self, entry: &MemberEntry) -> Result<(), BoxError> {
        let value = serde_json::to_vec(entry)?;
        tokio::time::timeout(REQUEST_TIMEOUT, self.store.put(&self.me, value.into())).await??;
        Ok(())
    }

    /// The live members and their entries, this one included (as `mine`,
    /// whatever the bucket holds).
    pub(super) async fn live(
        &self,
        mine: &MemberEntry,
    ) -> Result<BTreeMap<String, MemberEntry>, BoxError> {
        let listing =
            async {
                let keys = self.store.keys().await?;
                let others: BTreeSet<String> = keys.try_collect().await?;
                let reads = others.into_iter().filter(|member| *member != self.me).map(
                    |member| async move {
                        let value = self.store.get(member.as_str()).await?;
                        Ok::<_, BoxError>(value.map(|value| (member, MemberEntry::parse(&value))))
                    },
                );
                let entries = futures_util::future::try_join_all(reads).await?;
                // Gone between the listing and the read: not a member.
                Ok::<_, BoxError>(entries.into_iter().flatten().collect::<BTreeMap<_, _>>())
            };
        let mut members = tokio::time::timeout(REQUEST_TIMEOUT, listing).await??;
        members.insert(self.me.clone(), mine.clone());
        Ok(members)
    }

    /// Leaves the group: the others take its partitions at their next
    /// heartbeat instead of after the TTL.
    pub(super) async fn leave(&self) {
        if let Err(err) = tokio::time::timeout(REQUEST_TIMEOUT, self.store.purge(&self.me))
            .await
            .map_err(BoxError::from)
            .and_then(|purged| purged.map_err(BoxError::from))
        {
            tracing::warn!(member = %self.me, error = %err, "could not leave the partitioned group; the others wait for its TTL");
        }
    }
}

#[cfg(test)]
mod tests {
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
}
