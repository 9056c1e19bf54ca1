//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size in which
//! each backend owns slots in proportion to its weight, and removing a backend moves few slots
//! other than its own.

/// A backend in a table: its slot number (what the table holds), its name (what its permutation
/// derives from, so it must be stable) and its weight.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub slot: u32,
    pub name: &'a str,
    pub weight: u32,
}

/// FNV-1a, seeded: two independent hashes of a name for the permutation.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Fills a table of `size` entries (a prime) with the members' slots; `empty` everywhere when
/// there is no member with a weight.
pub fn table(members: &[Member<'_>], size: usize, empty: u32) -> Vec<u32> {
    let mut table = vec![empty; size];
    let members: Vec<&Member<'_>> = members.iter().filter(|m| m.weight > 0).collect();
    if members.is_empty() || size < 2 {
        return table;
    }
    let size64 = size as u64;
    let permutation: Vec<(u64, u64)> = members
        .iter()
        .map(|m| {
            let offset = fnv1a(0, m.name.as_bytes()) % size64;
            let skip = fnv1a(0x5bd1_e995, m.name.as_bytes()) % (size64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut filled = 0;
    'fill: loop {
        for (i, member) in members.iter().enumerate() {
            // A weight of w takes w turns per round.
            for _ in 0..member.weight {
                let (offset, skip) = permutation[i];
                let mut entry = (offset + next[i] * skip) % size64;
                while table[entry as usize] != empty {
                    next[i] += 1;
                    entry = (offset + next[i] * skip) % size64;
                }
                table[entry as usize] = member.slot;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 65537;

    fn members(names: &[&'static str]) -> Vec<Member<'static>> {
        names.iter().enumerate().map(|(i, name)| Member { slot: i as u32, name, weight: 1 }).collect()
    }

    #[test]
    fn every_entry_is_filled_evenly() {
        let table = table(&members(&["b1", "b2", "b3"]), SIZE, u32::MAX);
        let counts: Vec<usize> = (0..3).map(|s| table.iter().filter(|&&e| e == s).count()).collect();
        assert_eq!(counts.iter().sum::<usize>(), SIZE);
        for count in counts {
            assert!(count.abs_diff(SIZE / 3) <= 1, "{count}");
        }
    }

    #[test]
    fn weights_share_the_table() {
        let mut heavy = members(&["b1", "b2"]);
        heavy[0].weight = 3;
        let table = table(&heavy, SIZE, u32::MAX);
        let first = table.iter().filter(|&&e| e == 0).count();
        assert!(first.abs_diff(SIZE * 3 / 4) <= 2, "{first}");
    }

    #[test]
    fn removing_a_backend_moves_few_other_entries() {
        let before = table(&members(&["b1", "b2", "b3", "b4"]), SIZE, u32::MAX);
        let remaining: Vec<Member<'static>> =
            members(&["b1", "b2", "b3", "b4"]).into_iter().filter(|m| m.slot != 1).collect();
        let after = table(&remaining, SIZE, u32::MAX);
        let moved = before.iter().zip(&after).filter(|(b, a)| **b != 1 && b != a).count();
        // Only the removed backend's quarter must move; Maglev moves a few percent of the rest.
        assert!(moved < SIZE / 20, "{moved} entries of surviving backends moved");
        assert!(after.iter().all(|&e| e != 1 && e != u32::MAX));
    }

    #[test]
    fn no_member_means_no_backend() {
        assert!(table(&[], 7, u32::MAX).iter().all(|&e| e == u32::MAX));
    }
}
