//! Where the aggregates a store has seen stood, so that an append with
//! [`Expected::Version`](super::Expected::Version), `Expected::Any` or
//! `Expected::Exists` can skip reading the aggregate's last event.
//!
//! An aggregate's version is a count of its events (a header on each); what
//! the server checks is a stream sequence (`Nats-Expected-Last-Subject-
//! Sequence` on the aggregate's filter). Turning the expected version into
//! that sequence takes the aggregate's last event: one direct get, a round
//! trip, before every append. But the store has usually just seen that
//! event: the caller loaded the aggregate (which reads its last event) or
//! appended to it, then decided, then appends at that version. The store
//! remembers the position of each aggregate it read or appended to, and an
//! append expecting the version remembered names its sequence directly. So
//! does an append expecting `Any` version, or `Exists` when the position
//! remembered has events: the server accepts it only if that event is still
//! the aggregate's last, so the aggregate still exists and the versions
//! written follow the remembered one. (`NoStream` names sequence 0 and
//! never needed a read.)
//!
//! A remembered position is a guess the server checks: if another writer
//! appended since, the server refuses the append, and the store reads the
//! last event as it would have without the guess. The conflict is then the
//! same typed error, decided on the same read; nothing is stored that the
//! read would have refused.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::Position;

/// Most aggregates remembered: when full, the store forgets them all and
/// starts again (a forgotten one costs one read, as without this).
const MAX_REMEMBERED: usize = 4096;

/// The last position seen of each aggregate, by its filter.
#[derive(Default)]
pub(super) struct KnownPositions {
    by_filter: Mutex<HashMap<String, Position>>,
}

/// How many, not which: the store's `Debug` stays short.
impl std::fmt::Debug for KnownPositions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let remembered = self
            .by_filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("KnownPositions")
            .field("remembered", &remembered)
            .finish()
    }
}

impl KnownPositions {
    /// Notes that the aggregate of `filter` stood at `position`. Of two
    /// notes, the later event wins: a load that read the aggregate before
    /// an append of this store finished must not bring back the older
    /// position.
    pub(super) fn remember(&self, filter: &str, position: Position) {
        // A panic while holding the lock cannot leave the map half-written.
        let mut by_filter = self
            .by_filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = by_filter.get_mut(filter) {
            if position.sequence >= known.sequence {
                *known = position;
            }
            return;
        }
        if by_filter.len() >= MAX_REMEMBERED {
            by_filter.clear();
        }
        by_filter.insert(filter.to_owned(), position);
    }

    /// Where the aggregate of `filter` was last seen, at whatever version.
    pub(super) fn last_seen(&self, filter: &str) -> Option<Position> {
        let by_filter = self
            .by_filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_filter.get(filter).copied()
    }

    /// Where the aggregate of `filter` was last seen, if it was at
    /// `version` then.
    pub(super) fn at_version(&self, filter: &str, version: u64) -> Option<Position> {
        let by_filter = self
            .by_filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_filter
            .get(filter)
            .filter(|known| known.version == version)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64, sequence: u64) -> Position {
        Position { version, sequence }
    }

    #[test]
    fn a_position_is_found_only_at_its_version() {
        let known = KnownPositions::default();
        assert_eq!(known.at_version("a", 0), None);
        known.remember("a", at(3, 17));
        assert_eq!(known.at_version("a", 3), Some(at(3, 17)));
        assert_eq!(known.at_version("a", 2), None);
        assert_eq!(known.at_version("b", 3), None);
        assert_eq!(known.last_seen("a"), Some(at(3, 17)));
        assert_eq!(known.last_seen("b"), None);
    }

    #[test]
    fn an_older_position_does_not_replace_a_newer_one() {
        let known = KnownPositions::default();
        known.remember("a", at(3, 17));
        known.remember("a", at(2, 12));
        assert_eq!(known.at_version("a", 3), Some(at(3, 17)));
        known.remember("a", at(4, 30));
        assert_eq!(known.at_version("a", 4), Some(at(4, 30)));
    }

    #[test]
    fn a_full_memory_starts_again_rather_than_grow() {
        let known = KnownPositions::default();
        for n in 0..MAX_REMEMBERED as u64 {
            known.remember(&n.to_string(), at(1, n + 1));
        }
        known.remember("one more", at(1, 1));
        let by_filter = known
            .by_filter
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert_eq!(by_filter.len(), 1);
    }
}
