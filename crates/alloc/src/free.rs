//! The free addresses of one pool and family, as disjoint intervals keyed by
//! their start. Memory grows with fragmentation (at most one interval per
//! allocated address plus the pool's own intervals), never with pool size.

use ferrolb_ipset::{is_buggy, Family, IpInterval};
use std::collections::BTreeMap;

/// Free addresses of one family of one pool.
#[derive(Debug, Clone)]
pub(crate) struct FreeSet {
    family: Family,
    avoid_buggy: bool,
    /// start -> end, disjoint and non-adjacent.
    runs: BTreeMap<u128, u128>,
}

impl FreeSet {
    pub fn new(family: Family, intervals: &[IpInterval], avoid_buggy: bool) -> FreeSet {
        FreeSet {
            family,
            avoid_buggy: avoid_buggy && family == Family::V4,
            runs: intervals.iter().map(|iv| (iv.start(), iv.end())).collect(),
        }
    }

    fn unusable(&self, value: u128) -> bool {
        self.avoid_buggy && is_buggy(self.family.addr(value))
    }

    /// The lowest free, usable address, without taking it.
    ///
    /// Buggy addresses found at the front of a run are dropped from the set
    /// for good (they can never be handed out), which keeps this amortised
    /// O(log n).
    pub fn first(&mut self) -> Option<u128> {
        loop {
            let (&start, &end) = self.runs.first_key_value()?;
            let mut s = start;
            while s <= end && self.unusable(s) {
                s += 1;
            }
            if s == start {
                return Some(s);
            }
            self.runs.remove(&start);
            if s <= end {
                self.runs.insert(s, end);
                return Some(s);
            }
        }
    }

    /// Whether `value` is free.
    pub fn contains(&self, value: u128) -> bool {
        self.runs
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &end)| value <= end)
    }

    /// Removes `value`; returns false if it was not free.
    pub fn take(&mut self, value: u128) -> bool {
        let Some((&start, &end)) = self.runs.range(..=value).next_back() else {
            return false;
        };
        if value > end {
            return false;
        }
        self.runs.remove(&start);
        if start < value {
            self.runs.insert(start, value - 1);
        }
        if value < end {
            self.runs.insert(value + 1, end);
        }
        true
    }

    /// Returns `value` to the set, merging with neighbouring runs.
    /// The caller only returns addresses that belong to the pool.
    pub fn put(&mut self, value: u128) {
        debug_assert!(!self.contains(value));
        let mut start = value;
        let mut end = value;
        if value > 0 {
            if let Some((&s, &e)) = self.runs.range(..value).next_back() {
                if e + 1 == value {
                    self.runs.remove(&s);
                    start = s;
                }
            }
        }
        if value < u128::MAX {
            if let Some(&e) = self.runs.get(&(value + 1)) {
                self.runs.remove(&(value + 1));
                end = e;
            }
        }
        self.runs.insert(start, end);
    }

    /// How many runs the set holds (for memory accounting in tests).
    #[cfg(test)]
    pub fn runs(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ivs: &[(u128, u128)], buggy: bool) -> FreeSet {
        let ivs: Vec<_> = ivs
            .iter()
            .map(|&(s, e)| IpInterval::new(Family::V4, s, e))
            .collect();
        FreeSet::new(Family::V4, &ivs, buggy)
    }

    #[test]
    fn take_and_put_split_and_merge() {
        let mut f = set(&[(10, 20)], false);
        assert!(f.take(15));
        assert!(!f.take(15));
        assert!(!f.contains(15) && f.contains(14) && f.contains(16));
        assert_eq!(f.runs(), 2);
        f.put(15);
        assert_eq!(f.runs(), 1);
        assert_eq!(f.first(), Some(10));
        assert!(!f.take(9) && !f.take(21));
    }

    #[test]
    fn first_skips_buggy_addresses() {
        // 10.0.0.255 - 10.0.1.1: .255 and .0 are skipped.
        let base = 10u128 << 24;
        let mut f = set(&[(base + 255, base + 257)], true);
        assert_eq!(f.first(), Some(base + 257));
        let mut g = set(&[(base + 255, base + 256), (base + 300, base + 300)], true);
        assert_eq!(g.first(), Some(base + 300));
        assert_eq!(g.runs(), 1, "runs holding only buggy addresses are dropped");
    }
}
