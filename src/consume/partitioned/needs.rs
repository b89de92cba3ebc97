//! What a partition needs of its owner: the event types its owner met and
//! could not handle (a newer version's, during a rolling deploy). The
//! member records them in its membership entry so that every member moves
//! the partition to one that handles them (see [`assignment`](super::assignment)).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

/// Types a member keeps as needed, all partitions together: a stream of
/// types nobody handles must not grow its entry without bound.
const MAX_NEEDS: usize = 256;

/// The types one partition's runner left unhandled since the member last
/// looked, shared between the runner and the member.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnhandledTypes(Arc<Mutex<BTreeSet<String>>>);

impl UnhandledTypes {
    /// Called by the runner for every event it leaves unhandled.
    pub(crate) fn record(&self, event_type: &str) {
        let mut types = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !types.contains(event_type) {
            types.insert(event_type.to_owned());
        }
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The types each partition needs, as far as this member has seen: kept
/// for the member's life, also after the partition moved away, so the
/// partition stays with a member that handles them instead of coming back.
/// They go with the member's entry (it leaves or dies).
pub(super) type Needs = BTreeMap<u16, BTreeSet<String>>;

/// Adds to `needs` what the runner of `partition` left unhandled.
pub(super) fn collect(needs: &mut Needs, partition: u16, unhandled: &UnhandledTypes) {
    for event_type in unhandled.take() {
        if add(needs, partition, &event_type) {
            tracing::info!(partition, event_type = %event_type, "partition needs a type this member does not handle");
        }
    }
}

/// Adds to `needs` what other members' entries say the partitions this
/// member owns need: the needs follow the partition to its owner, so they
/// outlive the member that recorded them. An older member that restarts
/// comes back under a new id without them; the partition must not go back
/// to it and stall there again until it meets the type once more.
pub(super) fn adopt<'a>(
    needs: &mut Needs,
    others: impl IntoIterator<Item = &'a Needs>,
    owned: &BTreeSet<u16>,
) {
    for theirs in others {
        for (partition, types) in theirs {
            if !owned.contains(partition) {
                continue;
            }
            for event_type in types {
                add(needs, *partition, event_type);
            }
        }
    }
}

/// Whether `event_type` is newly recorded for `partition`.
fn add(needs: &mut Needs, partition: u16, event_type: &str) -> bool {
    if needs
        .get(&partition)
        .is_some_and(|types| types.contains(event_type))
    {
        return false;
    }
    if needs.values().map(BTreeSet::len).sum::<usize>() >= MAX_NEEDS {
        tracing::warn!(partition, event_type = %event_type, "too many unhandled types recorded; this one does not move its partition");
        return false;
    }
    needs
        .entry(partition)
        .or_default()
        .insert(event_type.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_collected_once_per_partition() {
        let unhandled = UnhandledTypes::default();
        unhandled.record("a.b.c.v1");
        unhandled.record("a.b.c.v1");
        let mut needs = Needs::new();
        collect(&mut needs, 3, &unhandled);
        unhandled.record("a.b.c.v1");
        collect(&mut needs, 3, &unhandled);
        assert_eq!(needs.len(), 1);
        assert_eq!(needs[&3].len(), 1);
    }

    #[test]
    fn needs_are_bounded() {
        let unhandled = UnhandledTypes::default();
        for n in 0..MAX_NEEDS + 10 {
            unhandled.record(&format!("a.b.c{n}.v1"));
        }
        let mut needs = Needs::new();
        collect(&mut needs, 0, &unhandled);
        assert_eq!(needs[&0].len(), MAX_NEEDS);
    }

    #[test]
    fn the_owner_adopts_what_others_recorded_for_its_partitions_only() {
        let theirs: Needs = [
            (1, ["a.b.c.v2".to_owned()].into()),
            (2, ["a.b.d.v2".to_owned()].into()),
        ]
        .into();
        let mut mine: Needs = [(1, ["a.b.e.v2".to_owned()].into())].into();
        adopt(&mut mine, [&theirs], &[1, 3].into());
        let expected: Needs = [(1, ["a.b.c.v2".to_owned(), "a.b.e.v2".to_owned()].into())].into();
        assert_eq!(mine, expected);
    }

    #[test]
    fn adopted_needs_are_bounded() {
        let theirs: Needs = [(
            0,
            (0..MAX_NEEDS + 10)
                .map(|n| format!("a.b.c{n}.v1"))
                .collect(),
        )]
        .into();
        let mut mine = Needs::new();
        adopt(&mut mine, [&theirs], &[0].into());
        assert_eq!(mine[&0].len(), MAX_NEEDS);
    }
}
