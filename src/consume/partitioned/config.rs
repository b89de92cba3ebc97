//! How a partitioned group is laid out and how fast it fails over.

use std::time::Duration;

/// The settings of a [partitioned group](super) beyond those of its
/// consumer builder.
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::partitioned::PartitionedConfig;
///
/// let config = PartitionedConfig::new(16).member_ttl(Duration::from_secs(3));
/// assert_eq!(config.partitions, 16);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionedConfig {
    /// Partitions: the stream's transform must use the same number (see
    /// [`partitioned_stream`](super::partitioned_stream)). More partitions
    /// spread keys over more members; each is consumed one event at a time.
    pub partitions: u16,
    /// How long a member stays in the group without a heartbeat: a member
    /// that dies is replaced after at most this long (members beat every
    /// third of it).
    pub member_ttl: Duration,
    /// How long the server keeps a partition pinned to a member that stopped
    /// pulling (a member killed without releasing it): the other part of the
    /// failover time.
    pub pinned_ttl: Duration,
}

impl PartitionedConfig {
    /// `partitions` partitions, members replaced within 6 s and pins
    /// released within 6 s of a member's death.
    pub fn new(partitions: u16) -> Self {
        Self {
            partitions,
            member_ttl: Duration::from_secs(6),
            pinned_ttl: Duration::from_secs(6),
        }
    }

    /// Sets how long a silent member stays in the group.
    pub fn member_ttl(mut self, ttl: Duration) -> Self {
        self.member_ttl = ttl;
        self
    }

    /// Sets how long a silent member keeps its partitions pinned.
    pub fn pinned_ttl(mut self, ttl: Duration) -> Self {
        self.pinned_ttl = ttl;
        self
    }

    /// How often a member renews its membership and looks at the others.
    pub(super) fn heartbeat(&self) -> Duration {
        (self.member_ttl / 3).max(Duration::from_millis(100))
    }

    /// Checks what the server would refuse or what could not work.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 {
            return Err("a partitioned group needs at least one partition".to_owned());
        }
        // The server's KV bucket ages and pin timeouts are not finer.
        if self.member_ttl < Duration::from_secs(1) || self.pinned_ttl < Duration::from_secs(1) {
            return Err("member_ttl and pinned_ttl must be at least 1 s".to_owned());
        }
        Ok(())
    }
}
