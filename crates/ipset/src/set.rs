//! Sorted, merged interval sets of addresses.

use crate::{to_u128, Cidr, Family};
use std::fmt;
use std::net::IpAddr;

/// A closed interval `[start, end]` of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpInterval {
    family: Family,
    start: u128,
    end: u128,
}

impl IpInterval {
    /// Builds an interval. `start` must not exceed `end` (the caller checks).
    pub fn new(family: Family, start: u128, end: u128) -> IpInterval {
        debug_assert!(start <= end && end <= family.max_value());
        IpInterval { family, start, end }
    }

    /// The family of the addresses.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The first address as an integer.
    pub fn start(&self) -> u128 {
        self.start
    }

    /// The last address as an integer.
    pub fn end(&self) -> u128 {
        self.end
    }

    /// The first address.
    pub fn first(&self) -> IpAddr {
        self.family.addr(self.start)
    }

    /// The last address.
    pub fn last(&self) -> IpAddr {
        self.family.addr(self.end)
    }

    /// How many addresses it holds; saturates at `u128::MAX` for the one
    /// interval that cannot be counted in 128 bits, the whole IPv6 space.
    pub fn count(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }

    /// Whether `ip` lies inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.end).contains(&to_u128(ip))
    }

    /// The smallest list of CIDRs covering exactly this interval.
    pub fn to_cidrs(&self) -> Vec<Cidr> {
        let bits = self.family.bits() as u32;
        let mut out = Vec::new();
        let mut start = self.start;
        loop {
            // The largest block 2^k that is aligned at `start` and ends within the interval.
            let remaining = self.end - start;
            let fits = if remaining == u128::MAX {
                128
            } else {
                127 - (remaining + 1).leading_zeros()
            };
            let aligned = if start == 0 {
                bits
            } else {
                start.trailing_zeros()
            };
            let k = fits.min(aligned).min(bits);
            out.push(
                Cidr::containing(self.family.addr(start), (bits - k) as u8)
                    .expect("prefix is within the family's width"),
            );
            let block_last = start
                + if k == 128 {
                    u128::MAX
                } else {
                    (1u128 << k) - 1
                };
            if block_last >= self.end {
                return out;
            }
            start = block_last + 1;
        }
    }
}

impl fmt::Display for IpInterval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.first())
        } else {
            write!(f, "{}-{}", self.first(), self.last())
        }
    }
}

/// A set of addresses of both families, kept as sorted, disjoint,
/// non-adjacent intervals per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    v4: Vec<IpInterval>,
    v6: Vec<IpInterval>,
}

impl IpSet {
    /// An empty set.
    pub fn new() -> IpSet {
        IpSet::default()
    }

    /// Builds a set from intervals in any order; overlapping and adjacent
    /// intervals are merged.
    pub fn from_intervals(intervals: impl IntoIterator<Item = IpInterval>) -> IpSet {
        let mut set = IpSet::new();
        for iv in intervals {
            match iv.family {
                Family::V4 => set.v4.push(iv),
                Family::V6 => set.v6.push(iv),
            }
        }
        normalise(&mut set.v4);
        normalise(&mut set.v6);
        set
    }

    /// The intervals of one family, sorted.
    pub fn intervals(&self, family: Family) -> &[IpInterval] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Every interval, IPv4 first, each family sorted.
    pub fn iter(&self) -> impl Iterator<Item = &IpInterval> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// Whether the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether the set holds addresses of `family`.
    pub fn has_family(&self, family: Family) -> bool {
        !self.intervals(family).is_empty()
    }

    /// How many addresses of `family` the set holds (saturating, see
    /// [`IpInterval::count`]).
    pub fn count(&self, family: Family) -> u128 {
        self.intervals(family)
            .iter()
            .fold(0u128, |acc, iv| acc.saturating_add(iv.count()))
    }

    /// The interval holding `ip`, if any. O(log n).
    pub fn find(&self, ip: IpAddr) -> Option<&IpInterval> {
        let list = self.intervals(Family::of(ip));
        let value = to_u128(ip);
        let idx = list.partition_point(|iv| iv.end < value);
        list.get(idx).filter(|iv| iv.start <= value)
    }

    /// Whether `ip` is in the set. O(log n).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }

    /// The first stretch of addresses both sets hold, if any.
    pub fn first_overlap(&self, other: &IpSet) -> Option<IpInterval> {
        for family in Family::ALL {
            let (a, b) = (self.intervals(family), other.intervals(family));
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                let start = a[i].start.max(b[j].start);
                let end = a[i].end.min(b[j].end);
                if start <= end {
                    return Some(IpInterval::new(family, start, end));
                }
                if a[i].end < b[j].end {
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        None
    }

    /// The smallest CIDR list covering exactly the set.
    pub fn to_cidrs(&self) -> Vec<Cidr> {
        self.iter().flat_map(|iv| iv.to_cidrs()).collect()
    }
}

/// Sorts and merges overlapping or adjacent intervals in place.
fn normalise(list: &mut Vec<IpInterval>) {
    list.sort_unstable();
    let mut out: Vec<IpInterval> = Vec::with_capacity(list.len());
    for iv in list.drain(..) {
        match out.last_mut() {
            Some(prev) if prev.end == u128::MAX || iv.start <= prev.end + 1 => {
                prev.end = prev.end.max(iv.end);
            }
            _ => out.push(iv),
        }
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(start: u128, end: u128) -> IpInterval {
        IpInterval::new(Family::V4, start, end)
    }

    #[test]
    fn merges_overlapping_and_adjacent() {
        let set = IpSet::from_intervals([v4(10, 20), v4(0, 5), v4(6, 8), v4(15, 30), v4(40, 40)]);
        assert_eq!(
            set.intervals(Family::V4),
            &[v4(0, 8), v4(10, 30), v4(40, 40)]
        );
        assert_eq!(set.count(Family::V4), 9 + 21 + 1);
    }

    #[test]
    fn cidr_decomposition_examples() {
        let iv = "10.0.0.1-10.0.0.6"
            .parse::<crate::AddrSpec>()
            .unwrap()
            .interval();
        let got: Vec<String> = iv.to_cidrs().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            got,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        let all6 = "::/0".parse::<Cidr>().unwrap().interval();
        assert_eq!(all6.to_cidrs(), vec!["::/0".parse::<Cidr>().unwrap()]);
        let all4 = "0.0.0.0/0".parse::<Cidr>().unwrap().interval();
        assert_eq!(all4.to_cidrs(), vec!["0.0.0.0/0".parse::<Cidr>().unwrap()]);
        let top = IpInterval::new(Family::V6, u128::MAX - 2, u128::MAX);
        let got: Vec<String> = top.to_cidrs().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            got,
            [
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffd/128",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
            ]
        );
    }

    proptest! {
        #[test]
        fn set_matches_brute_force(ranges in prop::collection::vec((0u128..300, 0u128..40), 0..12),
                                   probe in 0u128..400) {
            let ivs: Vec<_> = ranges.iter().map(|&(s, l)| v4(s, s + l)).collect();
            let set = IpSet::from_intervals(ivs.clone());
            let brute: std::collections::BTreeSet<u128> =
                ivs.iter().flat_map(|iv| iv.start..=iv.end).collect();
            prop_assert_eq!(set.count(Family::V4), brute.len() as u128);
            prop_assert_eq!(set.contains(Family::V4.addr(probe)), brute.contains(&probe));
            // Sorted, disjoint and non-adjacent.
            for w in set.intervals(Family::V4).windows(2) {
                prop_assert!(w[0].end + 1 < w[1].start);
            }
        }

        #[test]
        fn cidrs_cover_exactly(start in 0u128..5000, len in 0u128..5000) {
            let iv = v4(start, start + len);
            let cidrs = iv.to_cidrs();
            let mut next = iv.start;
            for c in &cidrs {
                let civ = c.interval();
                prop_assert_eq!(civ.start, next);
                next = civ.end + 1;
            }
            prop_assert_eq!(next, iv.end + 1);
            prop_assert!(cidrs.len() <= 2 * 32);
        }

        #[test]
        fn overlap_matches_brute_force(a in prop::collection::vec((0u128..200, 0u128..20), 0..6),
                                       b in prop::collection::vec((0u128..200, 0u128..20), 0..6)) {
            let sa = IpSet::from_intervals(a.iter().map(|&(s, l)| v4(s, s + l)));
            let sb = IpSet::from_intervals(b.iter().map(|&(s, l)| v4(s, s + l)));
            let brute = (0u128..260).find(|x| sa.contains(Family::V4.addr(*x)) && sb.contains(Family::V4.addr(*x)));
            prop_assert_eq!(sa.first_overlap(&sb).map(|iv| iv.start), brute);
        }
    }
}
