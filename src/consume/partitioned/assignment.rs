//! Which member owns which partition: a pure function of the live members,
//! so every member computes the same answer without talking to the others.
//!
//! Rendezvous (highest-random-weight) hashing with bounded loads: every
//! (partition, member) pair gets a score from a fixed hash, and the pairs
//! are taken best score first, each partition going to the first member
//! that has room (at most ⌈P/n⌉ partitions, and only P mod n members that
//! many). A partition's owner depends on the scores of the members, not on
//! their positions in the list, so when a member joins or leaves, the
//! partitions that move are (nearly always exactly) those the newcomer
//! takes or the leaver gave up; a modulo over the sorted list moves most of
//! them (and orbit.go's contiguous blocks shift every block boundary).
//!
//! Capability comes before balance: a partition that needs types its owner
//! does not handle (a newer version's, met during a rolling deploy) goes to
//! the best-scoring member among those that handle the most of them, the
//! other partitions staying where they are. Loads are uneven while the
//! deploy lasts; once every member handles what a partition needs, its
//! needs move nothing.

use std::collections::{BTreeMap, BTreeSet};

use super::membership::MemberEntry;

/// The partitions `me` owns among `members`. A member that is not (yet)
/// in the list owns nothing.
pub(super) fn owned_by(
    members: &BTreeMap<String, MemberEntry>,
    me: &str,
    partitions: u16,
) -> BTreeSet<u16> {
    let Some(position) = members.keys().position(|member| member == me) else {
        return BTreeSet::new();
    };
    let names: BTreeSet<String> = members.keys().cloned().collect();
    let mut owner = owners(&names, partitions);
    let entries: Vec<&MemberEntry> = members.values().collect();
    serve_needs(&mut owner, &entries, &member_hashes(&names));
    owner
        .into_iter()
        .zip(0u16..)
        .filter(|(owner, _)| *owner == position)
        .map(|(_, partition)| partition)
        .collect()
}

/// Moves each partition whose owner handles fewer of the types it needs
/// than another member to the best-scoring member that handles the most;
/// when no member handles any of them, the owner stays (its unhandled
/// policy decides).
fn serve_needs(owner: &mut [usize], entries: &[&MemberEntry], hashes: &[u64]) {
    let mut needs: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    for entry in entries {
        for (partition, types) in &entry.needs {
            needs
                .entry(*partition)
                .or_default()
                .extend(types.iter().map(String::as_str));
        }
    }
    for (partition, types) in needs {
        let Some(current) = owner.get_mut(usize::from(partition)) else {
            // Recorded under another partition count.
            continue;
        };
        let handled = |member: usize| {
            types
                .iter()
                .filter(|event_type| entries[member].handles(event_type))
                .count()
        };
        let most = (0..entries.len()).map(handled).max().unwrap_or(0);
        if most == 0 || handled(*current) == most {
            continue;
        }
        if let Some(best) = (0..entries.len())
            .filter(|member| handled(*member) == most)
            .max_by_key(|member| (score(hashes[*member], partition), *member))
        {
            *current = best;
        }
    }
}

fn member_hashes(members: &BTreeSet<String>) -> Vec<u64> {
    members
        .iter()
        .map(|member| fnv1a(member.as_bytes()))
        .collect()
}

/// The owner of every partition, as a position in `members` (sorted).
/// Empty without members.
fn owners(members: &BTreeSet<String>, partitions: u16) -> Vec<usize> {
    let count = members.len();
    if count == 0 {
        return Vec::new();
    }
    let base = usize::from(partitions) / count;
    // Members allowed one partition more than `base`.
    let extra = usize::from(partitions) % count;
    let member_hashes = member_hashes(members);
    let mut pairs: Vec<(u64, u16, usize)> = (0..partitions)
        .flat_map(|partition| {
            member_hashes
                .iter()
                .enumerate()
                .map(move |(member, hash)| (score(*hash, partition), partition, member))
        })
        .collect();
    // Best score first; ties (vanishingly rare) broken the same way everywhere.
    pairs.sort_unstable_by(|a, b| b.cmp(a));
    let mut owner: Vec<Option<usize>> = vec![None; usize::from(partitions)];
    let mut load = vec![0usize; count];
    let mut at_ceiling = 0usize;
    for (_, partition, member) in pairs {
        let slot = &mut owner[usize::from(partition)];
        if slot.is_some() {
            continue;
        }
        let room = if at_ceiling < extra { base + 1 } else { base };
        if load[member] < room {
            *slot = Some(member);
            load[member] += 1;
            if load[member] == base + 1 {
                at_ceiling += 1;
            }
        }
    }
    // Every slot is filled: the rooms add up to the partitions (see the tests).
    owner.into_iter().map(Option::unwrap_or_default).collect()
}

/// FNV-1a: fixed across processes, platforms and Rust versions, as every
/// member (and every version of the service in a rolling deploy) must
/// compute the same scores. `DefaultHasher` promises none of that.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The weight of `partition` for a member: splitmix64's finaliser over
/// both, so members' scores for one partition are independent.
fn score(member_hash: u64, partition: u16) -> u64 {
    let mut z = member_hash ^ u64::from(partition).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The partitions `me` owns among members that need nothing.
    fn owned(members: &BTreeSet<String>, me: &str, partitions: u16) -> BTreeSet<u16> {
        let entries = members
            .iter()
            .map(|member| (member.clone(), MemberEntry::default()))
            .collect();
        owned_by(&entries, me, partitions)
    }

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn named(count: usize) -> BTreeSet<String> {
        // Like real ids: UUIDv7-ish hex, sharing a long prefix.
        (0..count)
            .map(|n| format!("0190f3a2c4e07b3a9{n:015x}"))
            .collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_loads_differ_by_at_most_one() {
        for partitions in [1u16, 4, 7, 16, 64] {
            for count in 1..=20 {
                let all = named(count);
                let mut seen = vec![0u32; usize::from(partitions)];
                let mut loads = Vec::new();
                for name in &all {
                    let owned = owned(&all, name, partitions);
                    loads.push(owned.len());
                    for partition in owned {
                        seen[usize::from(partition)] += 1;
                    }
                }
                assert!(
                    seen.iter().all(|owners| *owners == 1),
                    "P={partitions}, {count} members: {seen:?}"
                );
                let (least, most) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                assert!(
                    most - least <= 1,
                    "P={partitions}, {count} members: {loads:?}"
                );
            }
        }
    }

    /// Partitions whose owner differs between two member lists.
    fn moved(before: &BTreeSet<String>, after: &BTreeSet<String>, partitions: u16) -> usize {
        let name_of = |all: &BTreeSet<String>, owners: Vec<usize>| -> Vec<String> {
            let names: Vec<&String> = all.iter().collect();
            owners.into_iter().map(|o| names[o].clone()).collect()
        };
        let one = name_of(before, owners(before, partitions));
        let two = name_of(after, owners(after, partitions));
        one.iter().zip(&two).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn a_join_or_a_leave_moves_little_more_than_it_must() {
        // The least that must move: to a newcomer, its share; from a
        // leaver, what it owned. A modulo over the sorted list moves about
        // three times that; the bounded loads cost some 30 % over it.
        let partitions = 16u16;
        let (mut total, mut least) = (0usize, 0usize);
        for count in 1..=8 {
            let before = named(count);
            let mut joined = before.clone();
            joined.insert("0190f3a2c4e07b3a9ffffffffffffff".to_owned());
            total += moved(&before, &joined, partitions);
            least += usize::from(partitions) / (count + 1);
            for leaver in before.iter().filter(|_| count > 1) {
                let mut left = before.clone();
                left.remove(leaver);
                total += moved(&before, &left, partitions);
                least += owned(&before, leaver, partitions).len();
            }
        }
        assert!(total * 2 <= least * 3, "{total} moved, {least} had to");
    }

    #[test]
    fn a_member_not_in_the_list_owns_nothing() {
        assert!(owned(&members(&["a"]), "b", 4).is_empty());
    }

    #[test]
    fn the_order_of_joining_does_not_matter() {
        let one = owned(&members(&["b", "a"]), "a", 4);
        let two = owned(&members(&["a", "b"]), "a", 4);
        assert_eq!(one, two);
        assert_eq!(one.len(), 2);
    }

    #[test]
    fn the_hash_is_fixed() {
        // Members of different builds must agree: pin the function.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            owners(&members(&["a", "b", "c"]), 8),
            owners(&members(&["c", "b", "a"]), 8)
        );
    }

    fn entry(handles: &[&str], needs: &[(u16, &str)]) -> MemberEntry {
        let mut entry = MemberEntry {
            handles: handles
                .iter()
                .map(|handled| (*handled).to_owned())
                .collect(),
            ..MemberEntry::default()
        };
        for (partition, event_type) in needs {
            entry
                .needs
                .entry(*partition)
                .or_default()
                .insert((*event_type).to_owned());
        }
        entry
    }

    /// The owner of every partition, by name.
    fn table(members: &BTreeMap<String, MemberEntry>, partitions: u16) -> Vec<String> {
        let mut table = vec![String::new(); usize::from(partitions)];
        for name in members.keys() {
            for partition in owned_by(members, name, partitions) {
                table[usize::from(partition)] = name.clone();
            }
        }
        table
    }

    const OLD: &str = "bank.account.opened.v1";
    const NEW: &str = "bank.account.frozen.v1";

    /// Two members of the old version and one of the new, none needing anything.
    fn deploy() -> BTreeMap<String, MemberEntry> {
        let names: Vec<String> = named(3).into_iter().collect();
        BTreeMap::from([
            (names[0].clone(), entry(&[OLD], &[])),
            (names[1].clone(), entry(&[OLD], &[])),
            (names[2].clone(), entry(&[OLD, NEW], &[])),
        ])
    }

    #[test]
    fn a_partition_needing_a_type_moves_to_a_member_that_handles_it_and_no_other_moves() {
        let partitions = 16;
        let mut members = deploy();
        let before = table(&members, partitions);
        let newer = members.keys().nth(2).unwrap().clone();
        let (needy, owner) = before
            .iter()
            .enumerate()
            .find(|(_, owner)| **owner != newer)
            .map(|(partition, owner)| (u16::try_from(partition).unwrap(), owner.clone()))
            .unwrap();
        members.insert(owner.clone(), entry(&[OLD], &[(needy, NEW)]));
        let after = table(&members, partitions);
        assert_eq!(after[usize::from(needy)], newer);
        let moved: Vec<usize> = (0..before.len())
            .filter(|partition| before[*partition] != after[*partition])
            .collect();
        assert_eq!(moved, [usize::from(needy)]);
    }

    #[test]
    fn a_partition_stays_when_its_owner_handles_what_it_needs() {
        let partitions = 16;
        let mut members = deploy();
        let before = table(&members, partitions);
        let newer = members.keys().nth(2).unwrap().clone();
        let mine = owned_by(&members, &newer, partitions);
        let needy = *mine.first().unwrap();
        members.insert(newer.clone(), entry(&[OLD, NEW], &[(needy, NEW)]));
        assert_eq!(table(&members, partitions), before);
    }

    #[test]
    fn without_a_member_that_handles_the_type_the_table_is_unchanged() {
        let partitions = 8;
        let mut members = deploy();
        let before = table(&members, partitions);
        let first = members.keys().next().unwrap().clone();
        members.insert(first, entry(&[OLD], &[(0, "bank.loan.granted.v1")]));
        assert_eq!(table(&members, partitions), before);
    }

    #[test]
    fn patterns_count_as_handling_and_the_best_scoring_capable_member_wins() {
        let partitions = 4;
        let names: Vec<String> = named(4).into_iter().collect();
        let mut members = BTreeMap::from([
            (names[0].clone(), entry(&[OLD], &[])),
            (names[1].clone(), entry(&["bank.account.*"], &[])),
            (names[2].clone(), entry(&["bank.>"], &[])),
            (names[3].clone(), entry(&[OLD], &[])),
        ]);
        let before = table(&members, partitions);
        let needy = (0..partitions)
            .find(|partition| {
                let owner = &before[usize::from(*partition)];
                *owner == names[0] || *owner == names[3]
            })
            .unwrap();
        let recorder = before[usize::from(needy)].clone();
        members.insert(recorder, entry(&[OLD], &[(needy, NEW)]));
        let after = table(&members, partitions);
        let capable = [&names[1], &names[2]];
        assert!(capable.contains(&&after[usize::from(needy)]), "{after:?}");
        // Every member computes the same: the one with the better score.
        let best = capable
            .iter()
            .max_by_key(|name| score(fnv1a(name.as_bytes()), needy))
            .unwrap();
        assert_eq!(&&after[usize::from(needy)], best);
    }

    #[test]
    fn the_member_handling_the_most_needed_types_wins() {
        let names: Vec<String> = named(3).into_iter().collect();
        let other = "bank.loan.granted.v1";
        let members = BTreeMap::from([
            (names[0].clone(), entry(&[OLD], &[(0, NEW), (0, other)])),
            (names[1].clone(), entry(&[OLD, NEW], &[])),
            (names[2].clone(), entry(&[OLD, NEW, other], &[])),
        ]);
        assert_eq!(table(&members, 1), [names[2].clone()]);
    }

    #[test]
    fn needs_of_partitions_beyond_the_count_are_ignored() {
        let names: Vec<String> = named(2).into_iter().collect();
        let members = BTreeMap::from([
            (names[0].clone(), entry(&[OLD], &[(9, NEW)])),
            (names[1].clone(), entry(&[OLD, NEW], &[])),
        ]);
        assert_eq!(table(&members, 4).len(), 4);
    }
}
