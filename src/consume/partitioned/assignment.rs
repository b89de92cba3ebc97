//! Which member owns which partition: a pure function of the live members,
//! so every member computes the same answer without talking to the others.

use std::collections::BTreeSet;

/// The partitions `me` owns among `members`: partition `p` goes to the
/// `p mod n`-th member in sorted order. A member that is not (yet) in the
/// list owns nothing.
pub(super) fn owned_by(members: &BTreeSet<String>, me: &str, partitions: u16) -> BTreeSet<u16> {
    let Some(position) = members.iter().position(|member| member == me) else {
        return BTreeSet::new();
    };
    let count = members.len();
    (0..partitions)
        .filter(|partition| usize::from(*partition) % count == position)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for count in 1..=5 {
            let names: Vec<String> = (0..count).map(|n| format!("m{n}")).collect();
            let all: BTreeSet<String> = names.iter().cloned().collect();
            let mut seen = vec![0u32; 16];
            for name in &names {
                for partition in owned_by(&all, name, 16) {
                    seen[usize::from(partition)] += 1;
                }
            }
            assert!(
                seen.iter().all(|owners| *owners == 1),
                "{count} members: {seen:?}"
            );
        }
    }

    #[test]
    fn owners_differ_by_at_most_one_partition() {
        let all = members(&["a", "b", "c"]);
        let sizes: Vec<usize> = ["a", "b", "c"]
            .iter()
            .map(|name| owned_by(&all, name, 16).len())
            .collect();
        assert_eq!(sizes, [6, 5, 5]);
    }

    #[test]
    fn a_member_not_in_the_list_owns_nothing() {
        assert!(owned_by(&members(&["a"]), "b", 4).is_empty());
    }

    #[test]
    fn the_order_of_joining_does_not_matter() {
        let one = owned_by(&members(&["b", "a"]), "a", 4);
        let two = owned_by(&members(&["a", "b"]), "a", 4);
        assert_eq!(one, two);
        assert_eq!(one, BTreeSet::from([0, 2]));
    }
}
