//! Priority groups (ADR-42): which instances of a group get the events
//! when several pull.
//!
//! Every instance of a group normally shares the events. With a priority
//! group the durable consumer gets a priority policy and each instance says,
//! in every pull request, on which terms it takes events:
//!
//! - **Overflow** ([`Priority::overflow_primary`], [`Priority::overflow_standby`]):
//!   primaries always get events; a standby pool gets them only while the
//!   consumer has at least `min_pending` events not yet delivered (the
//!   primaries fall behind), or, with [`Priority::min_ack_pending`], while at
//!   least that many are delivered and unacked (the primaries are slow).
//! - **Prioritized** ([`Priority::prioritized`]): the server serves the
//!   pulls of the lowest level first (0 to 9); a level gets events only
//!   when no instance of a lower one is waiting for them. A hot standby in
//!   another region, say, at level 1.
//!
//! Every instance of the group must set a priority with the same group
//! name and the same policy (the server refuses pulls without the group).
//! Pinned clients, the third policy, serve partitioned groups. The
//! in-memory JetStream of the test kit ignores priorities.
//!
//! Priority groups decide who consumes, not what is consumed first: to
//! give some event types precedence, give them their own subjects and
//! their own consumer (see the README's "Priorities and circuit breaking").
//!
//! ```no_run
//! use jetevents::consume::{Consumer, Context, HandlerError, Priority};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
//! # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
//! # async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
//! # fn f(client: jetevents::client::Client, standby: bool) {
//! // The standby pool helps once 1000 events are waiting.
//! let priority = if standby {
//!     Priority::overflow_standby("billing", 1000)
//! } else {
//!     Priority::overflow_primary("billing")
//! };
//! let builder = Consumer::builder(&client, "billing")
//!     .handle(on_paid)
//!     .priority(priority);
//! # }
//! ```

use async_nats::jetstream::consumer::{pull, PriorityPolicy};

/// Most characters of a priority group's name (ADR-42).
const MAX_GROUP_NAME: usize = 16;
/// The lowest priority of the prioritized policy (the server's bound).
const LOWEST_LEVEL: u8 = 9;

/// This instance's place in the group's priority group (see the
/// [module docs](self)): set with
/// [`ConsumerBuilder::priority`](super::ConsumerBuilder::priority).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Priority {
    group: String,
    role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Standby {
        min_pending: usize,
        min_ack_pending: Option<usize>,
    },
    Level(u8),
}

impl Priority {
    /// Overflow policy, as a primary: pulls get events whenever there are
    /// any.
    pub fn overflow_primary(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            role: Role::Primary,
        }
    }

    /// Overflow policy, as a standby: pulls get events only while the
    /// consumer holds at least `min_pending` events not yet delivered.
    pub fn overflow_standby(group: impl Into<String>, min_pending: usize) -> Self {
        Self {
            group: group.into(),
            role: Role::Standby {
                min_pending,
                min_ack_pending: None,
            },
        }
    }

    /// A standby also gets events while at least `min_ack_pending` are
    /// delivered and not yet acked (the primaries are slow rather than
    /// behind). No effect on the other roles.
    pub fn min_ack_pending(mut self, min_ack_pending: usize) -> Self {
        if let Role::Standby {
            min_ack_pending: ref mut set,
            ..
        } = self.role
        {
            *set = Some(min_ack_pending);
        }
        self
    }

    /// Prioritized policy: the pulls of `level` are served only when no
    /// instance of a lower level waits (0 first; above 9 counts as 9).
    pub fn prioritized(group: impl Into<String>, level: u8) -> Self {
        Self {
            group: group.into(),
            role: Role::Level(level.min(LOWEST_LEVEL)),
        }
    }

    /// The priority group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Why the group name cannot be used, if it cannot: 1 to 16 letters,
    /// digits, `-`, `_`, `/` or `=`.
    pub(super) fn invalid_group(&self) -> Option<String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '=');
        let valid = !self.group.is_empty()
            && self.group.len() <= MAX_GROUP_NAME
            && self.group.chars().all(allowed);
        (!valid).then(|| {
            format!(
                "priority group {:?}: 1 to {MAX_GROUP_NAME} letters, digits, '-', '_', '/' or '='",
                self.group
            )
        })
    }

    /// The durable consumer's side: its policy and group.
    pub(super) fn configure(&self, config: &mut pull::Config) {
        config.priority_policy = match self.role {
            Role::Primary | Role::Standby { .. } => PriorityPolicy::Overflow,
            Role::Level(_) => PriorityPolicy::Prioritized,
        };
        config.priority_groups = vec![self.group.clone()];
    }

    /// What every pull request of this instance carries.
    pub(super) fn apply(&self, request: &mut pull::BatchConfig) {
        request.group = Some(self.group.clone());
        match self.role {
            Role::Primary => {}
            Role::Standby {
                min_pending,
                min_ack_pending,
            } => {
                request.min_pending = Some(min_pending);
                request.min_ack_pending = min_ack_pending;
            }
            Role::Level(level) => request.priority = Some(usize::from(level)),
        }
    }

    /// Whether a pull that brought nothing while the consumer holds
    /// `pending` undelivered and `ack_pending` unacked events is this
    /// role at work rather than a stuck consumer.
    pub(super) fn explains_empty_pull(&self, pending: u64, ack_pending: usize) -> bool {
        match self.role {
            Role::Primary => false,
            Role::Standby {
                min_pending,
                min_ack_pending,
            } => {
                let behind = usize::try_from(pending).unwrap_or(usize::MAX) >= min_pending;
                let slow = min_ack_pending.is_some_and(|min| ack_pending >= min);
                !behind && !slow
            }
            // Lower levels may have taken them.
            Role::Level(level) => level > 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn pull_requests_carry_the_role() {
        let mut request = pull::BatchConfig::default();
        Priority::overflow_standby("workers", 100)
            .min_ack_pending(50)
            .apply(&mut request);
        assert_eq!(request.group.as_deref(), Some("workers"));
        assert_eq!(request.min_pending, Some(100));
        assert_eq!(request.min_ack_pending, Some(50));
        let mut request = pull::BatchConfig::default();
        Priority::prioritized("workers", 12).apply(&mut request);
        assert_eq!(request.priority, Some(9));
        assert_eq!(request.min_pending, None);
    }

    #[test]
    fn the_consumer_gets_the_policy_and_the_group() {
        let mut config = pull::Config::default();
        Priority::overflow_primary("workers").configure(&mut config);
        assert_eq!(config.priority_policy, PriorityPolicy::Overflow);
        assert_eq!(config.priority_groups, vec!["workers".to_owned()]);
        Priority::prioritized("workers", 0).configure(&mut config);
        assert_eq!(config.priority_policy, PriorityPolicy::Prioritized);
    }

    #[test]
    fn group_names_follow_adr_42() {
        assert!(Priority::overflow_primary("a-b_c/d=1")
            .invalid_group()
            .is_none());
        assert!(Priority::overflow_primary("").invalid_group().is_some());
        assert!(Priority::overflow_primary("has.dot")
            .invalid_group()
            .is_some());
        assert!(Priority::overflow_primary("x".repeat(17))
            .invalid_group()
            .is_some());
    }

    #[test]
    fn only_a_standby_below_its_thresholds_or_a_lower_level_explains_an_empty_pull() {
        let standby = Priority::overflow_standby("w", 10).min_ack_pending(5);
        assert!(standby.explains_empty_pull(9, 4));
        assert!(!standby.explains_empty_pull(10, 0));
        assert!(!standby.explains_empty_pull(0, 5));
        assert!(!Priority::overflow_primary("w").explains_empty_pull(3, 0));
        assert!(Priority::prioritized("w", 1).explains_empty_pull(3, 0));
        assert!(!Priority::prioritized("w", 0).explains_empty_pull(3, 0));
    }
}
