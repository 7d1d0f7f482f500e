//! Address arithmetic shared by every ferrolb component.
//!
//! Addresses are handled as 128-bit integers tagged with their family, so an
//! IPv6 /64 pool costs the same as an IPv4 /30: sets are sorted, merged
//! intervals, never lists of addresses. Nothing here does I/O.

mod cidr;
mod set;

pub use cidr::{AddrSpec, Cidr, ParseError};
pub use set::{IpInterval, IpSet};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4 (32-bit addresses).
    V4,
    /// IPv6 (128-bit addresses).
    V6,
}

impl Family {
    /// Both families, IPv4 first (the order used for output and tie-breaks).
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The largest address of this family as an integer.
    pub fn max_value(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    /// Builds an address of this family from its integer value.
    ///
    /// For IPv4 only the low 32 bits are used; callers keep values in range.
    pub fn addr(self, value: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The integer value of an address (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Whether `ip` ends in .0 or .255, which some old firmware treats as a
/// network or broadcast address even inside a larger prefix (MetalLB's
/// `avoid-buggy-ips`). Never true for IPv6.
pub fn is_buggy(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => matches!(a.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// How many IPv4 addresses in `[start, end]` end in .0 or .255.
pub fn buggy_count(start: u128, end: u128) -> u128 {
    // Addresses x with x % 256 == 0, and with x % 256 == 255, counted by floor division.
    fn upto(n: u128, residue: u128) -> u128 {
        // How many x in [0, n] have x % 256 == residue.
        if n < residue {
            0
        } else {
            (n - residue) / 256 + 1
        }
    }
    if start > end {
        return 0;
    }
    let count = |residue| {
        upto(end, residue)
            - if start == 0 {
                0
            } else {
                upto(start - 1, residue)
            }
    };
    count(0) + count(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buggy_count_matches_brute_force() {
        for start in 0u128..600 {
            for end in start..start + 700 {
                let brute = (start..=end)
                    .filter(|x| is_buggy(Family::V4.addr(*x)))
                    .count() as u128;
                assert_eq!(buggy_count(start, end), brute, "[{start}, {end}]");
            }
        }
        assert_eq!(buggy_count(5, 4), 0);
        // A whole /8: 65536 /24s, two buggy addresses each.
        assert_eq!(buggy_count(10 << 24, (11 << 24) - 1), 2 * 65536);
    }

    #[test]
    fn family_round_trip() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "192.0.2.7",
            "::",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(Family::of(ip).addr(to_u128(ip)), ip);
        }
    }
}
