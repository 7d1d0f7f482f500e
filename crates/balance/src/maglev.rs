//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! Each backend gets a permutation of the table's slots from two hashes of
//! its name; backends take turns claiming their next free preferred slot,
//! a backend of weight w taking w turns per round. The result depends only
//! on the backend names, weights and order-independent tie rules, so every
//! host computes the same table, and removing one of N backends moves about
//! 1/N of the slots.

use crate::hash::hash64;

/// The default table size: a prime well above 100 x the largest backend
/// count we expect, which keeps the imbalance between backends under ~1%.
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// A lookup table mapping hash slots to backend indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for `backends` (name, weight). Backends of weight 0
    /// get no slot. `size` must be prime (or at least coprime with every
    /// skip) for each permutation to visit every slot; use
    /// [`DEFAULT_TABLE_SIZE`] or another prime. Returns `None` when no
    /// backend has a positive weight.
    ///
    /// The table is the same whatever order `backends` come in: they are
    /// processed sorted by name, and indices refer to positions in the
    /// slice given.
    pub fn build(backends: &[(&str, u32)], size: usize) -> Option<Table> {
        assert!(size >= 2, "table size must be at least 2");
        let mut order: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].1 > 0).collect();
        if order.is_empty() {
            return None;
        }
        order.sort_by(|&a, &b| backends[a].0.cmp(backends[b].0).then(a.cmp(&b)));
        let m = size as u64;
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let name = backends[i].0.as_bytes();
                let offset = hash64(name, 0x6d61_676c) % m;
                let skip = hash64(name, 0x736b_6970) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut slots = vec![u32::MAX; size];
        let mut filled = 0usize;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                for _ in 0..backends[i].1 {
                    let (offset, skip) = perms[k];
                    let mut c = (offset + next[k] * skip) % m;
                    while slots[c as usize] != u32::MAX {
                        next[k] += 1;
                        c = (offset + next[k] * skip) % m;
                    }
                    slots[c as usize] = i as u32;
                    next[k] += 1;
                    filled += 1;
                    if filled == size {
                        break 'fill;
                    }
                }
            }
        }
        Some(Table { slots })
    }

    /// The backend index for a hash.
    pub fn lookup(&self, hash: u64) -> usize {
        self.slots[(hash % self.slots.len() as u64) as usize] as usize
    }

    /// The backend for a hash, skipping backends `skip` rejects by walking
    /// the following slots (used to retry after a failed connect without
    /// reshuffling other clients).
    pub fn lookup_excluding(&self, hash: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.slots.len();
        let start = (hash % len as u64) as usize;
        (0..len)
            .map(|k| self.slots[(start + k) % len] as usize)
            .find(|&b| !skip(b))
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table has no slot (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many slots each backend index owns.
    pub fn shares(&self, backends: usize) -> Vec<usize> {
        let mut out = vec![0; backends];
        for &s in &self.slots {
            out[s as usize] += 1;
        }
        out
    }

    /// The backend index of every slot.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn build(names: &[String], size: usize) -> Table {
        let b: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        Table::build(&b, size).unwrap()
    }

    #[test]
    fn no_backend_no_table() {
        assert!(Table::build(&[], 7).is_none());
        assert!(Table::build(&[("a", 0)], 7).is_none());
    }

    #[test]
    fn spread_is_even() {
        for n in [2, 3, 5, 10, 33] {
            let t = build(&names(n), DEFAULT_TABLE_SIZE);
            let shares = t.shares(n);
            let ideal = DEFAULT_TABLE_SIZE as f64 / n as f64;
            for s in shares {
                assert!(
                    (s as f64 - ideal).abs() / ideal < 0.02,
                    "n={n}: share {s} vs ideal {ideal}"
                );
            }
        }
    }

    #[test]
    fn weights_are_proportional() {
        let t = Table::build(&[("a", 1), ("b", 2), ("c", 3)], DEFAULT_TABLE_SIZE).unwrap();
        let s = t.shares(3);
        let total = DEFAULT_TABLE_SIZE as f64;
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let want = total * w / 6.0;
            assert!((s[i] as f64 - want).abs() / want < 0.02, "{s:?}");
        }
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let n = names(7);
        let t1 = build(&n, 1009);
        let mut rev = n.clone();
        rev.reverse();
        let t2 = build(&rev, 1009);
        // Same backend in every slot, although indices differ.
        for (a, b) in t1.slots().iter().zip(t2.slots()) {
            assert_eq!(n[*a as usize], rev[*b as usize]);
        }
    }

    #[test]
    fn golden_table_is_stable_across_builds() {
        // A change here means hosts running different versions disagree: bump it only on purpose.
        let t = build(&names(3), 13);
        assert_eq!(t.slots(), GOLDEN_13);
    }
    const GOLDEN_13: &[u32] = &[1, 1, 1, 0, 0, 2, 2, 2, 0, 1, 0, 2, 0];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn removing_one_moves_about_one_nth(n in 2usize..20, victim in 0usize..20) {
            let victim = victim % n;
            let all = names(n);
            let t1 = build(&all, 4099);
            let rest: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, s)| s.clone()).collect();
            let t2 = build(&rest, 4099);
            let moved = t1
                .slots()
                .iter()
                .zip(t2.slots())
                .filter(|(a, b)| all[**a as usize] != rest[**b as usize])
                .count();
            let one_nth = 4099.0 / n as f64;
            // The victim's own slots must move; other slots may move a little (Maglev is not minimal).
            prop_assert!(moved as f64 <= one_nth * 1.15 + 4099.0 * 0.02, "moved {} of 4099 with n={}", moved, n);
        }
    }
}
