//! Parsing of the address notations operators write: `10.0.0.0/24`,
//! `10.0.0.10-10.0.0.20`, a single address, and the IPv6 forms of each.

use crate::{to_u128, Family, IpInterval};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why an address notation was rejected. Messages are meant for operators.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text is not an address, CIDR or range at all.
    #[error("{0:?} is not an IP address, CIDR (10.0.0.0/24) or range (10.0.0.1-10.0.0.9)")]
    Malformed(String),
    /// The prefix length is not a number or exceeds the family's width.
    #[error("{text:?} is not a CIDR: the prefix length must be 0-{max} for {family}")]
    BadPrefix {
        /// What the operator wrote.
        text: String,
        /// The family of the address part.
        family: Family,
        /// The largest valid prefix length.
        max: u8,
    },
    /// Bits below the prefix are set, which usually means a typo.
    #[error("{text:?} has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// What the operator wrote.
        text: String,
        /// The network the operator probably meant.
        suggestion: Cidr,
    },
    /// The two ends of a range are of different families.
    #[error("{0:?} mixes IPv4 and IPv6; a range must stay within one family")]
    MixedRange(String),
    /// The range ends before it starts.
    #[error("{0:?} ends before it starts; write the lower address first")]
    ReversedRange(String),
}

/// A network prefix with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds the prefix of length `prefix` containing `addr`, clearing host bits.
    /// Returns `None` if `prefix` exceeds the family's width.
    pub fn containing(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let family = Family::of(addr);
        if prefix > family.bits() {
            return None;
        }
        let value = to_u128(addr) & mask(family, prefix);
        Some(Cidr {
            addr: family.addr(value),
            prefix,
        })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The family of the prefix.
    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    /// The addresses covered, as an interval.
    pub fn interval(&self) -> IpInterval {
        let family = self.family();
        let start = to_u128(self.addr);
        let host = !mask(family, self.prefix) & family.max_value();
        IpInterval::new(family, start, start | host)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<Cidr, ParseError> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| ParseError::Malformed(text.to_string()))?;
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| ParseError::Malformed(text.to_string()))?;
        let family = Family::of(addr);
        let bad_prefix = || ParseError::BadPrefix {
            text: text.to_string(),
            family,
            max: family.bits(),
        };
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad_prefix())?;
        let cidr = Cidr::containing(addr, prefix).ok_or_else(bad_prefix)?;
        if cidr.addr != addr {
            return Err(ParseError::HostBits {
                text: text.to_string(),
                suggestion: cidr,
            });
        }
        Ok(cidr)
    }
}

/// The network mask of `prefix` bits, as an integer in the family's width.
fn mask(family: Family, prefix: u8) -> u128 {
    let bits = family.bits();
    if prefix == 0 {
        0
    } else {
        (family.max_value() >> (bits - prefix)) << (bits - prefix)
    }
}

/// One entry of a pool's `addresses` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrSpec {
    /// `10.0.0.0/24`
    Cidr(Cidr),
    /// `10.0.0.10-10.0.0.20` (both ends included)
    Range(IpAddr, IpAddr),
    /// `10.0.0.7`
    Single(IpAddr),
}

impl AddrSpec {
    /// The addresses covered, as an interval.
    pub fn interval(&self) -> IpInterval {
        match *self {
            AddrSpec::Cidr(c) => c.interval(),
            AddrSpec::Range(a, b) => IpInterval::new(Family::of(a), to_u128(a), to_u128(b)),
            AddrSpec::Single(a) => IpInterval::new(Family::of(a), to_u128(a), to_u128(a)),
        }
    }
}

impl fmt::Display for AddrSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrSpec::Cidr(c) => c.fmt(f),
            AddrSpec::Range(a, b) => write!(f, "{a}-{b}"),
            AddrSpec::Single(a) => a.fmt(f),
        }
    }
}

impl FromStr for AddrSpec {
    type Err = ParseError;
    fn from_str(text: &str) -> Result<AddrSpec, ParseError> {
        let trimmed = text.trim();
        if trimmed.contains('/') {
            return trimmed.parse().map(AddrSpec::Cidr);
        }
        if let Some((a, b)) = trimmed.split_once('-') {
            let parse = |s: &str| -> Result<IpAddr, ParseError> {
                s.trim()
                    .parse()
                    .map_err(|_| ParseError::Malformed(text.to_string()))
            };
            let (a, b) = (parse(a)?, parse(b)?);
            if Family::of(a) != Family::of(b) {
                return Err(ParseError::MixedRange(text.to_string()));
            }
            if to_u128(a) > to_u128(b) {
                return Err(ParseError::ReversedRange(text.to_string()));
            }
            return Ok(AddrSpec::Range(a, b));
        }
        trimmed
            .parse()
            .map(AddrSpec::Single)
            .map_err(|_| ParseError::Malformed(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_good_notations() {
        let table = [
            ("10.0.0.0/24", "10.0.0.0", "10.0.0.255"),
            ("10.0.0.0/32", "10.0.0.0", "10.0.0.0"),
            ("0.0.0.0/0", "0.0.0.0", "255.255.255.255"),
            ("10.0.0.5-10.0.0.9", "10.0.0.5", "10.0.0.9"),
            (" 10.0.0.5 - 10.0.0.5 ", "10.0.0.5", "10.0.0.5"),
            ("192.0.2.1", "192.0.2.1", "192.0.2.1"),
            (
                "2001:db8::/64",
                "2001:db8::",
                "2001:db8::ffff:ffff:ffff:ffff",
            ),
            ("2001:db8::1-2001:db8::ff", "2001:db8::1", "2001:db8::ff"),
            ("::/0", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ];
        for (text, first, last) in table {
            let spec: AddrSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            let iv = spec.interval();
            assert_eq!(iv.first(), first.parse::<IpAddr>().unwrap(), "{text}");
            assert_eq!(iv.last(), last.parse::<IpAddr>().unwrap(), "{text}");
        }
    }

    #[test]
    fn rejects_bad_notations_with_reasons() {
        let cases: [(&str, &str); 9] = [
            ("10.0.0.0/33", "prefix length must be 0-32"),
            ("2001:db8::/129", "0-128 for IPv6"),
            ("10.0.0.0/x", "prefix length"),
            ("10.0.0.1/24", "did you mean 10.0.0.0/24"),
            ("10.0.0.9-10.0.0.1", "ends before it starts"),
            ("10.0.0.1-2001:db8::1", "mixes IPv4 and IPv6"),
            ("10.0.0", "is not an IP address"),
            ("", "is not an IP address"),
            ("banana-split", "is not an IP address"),
        ];
        for (text, want) in cases {
            let err = text.parse::<AddrSpec>().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn containing_clears_host_bits() {
        let c = Cidr::containing("192.0.2.77".parse().unwrap(), 26).unwrap();
        assert_eq!(c.to_string(), "192.0.2.64/26");
        assert!(Cidr::containing("192.0.2.77".parse().unwrap(), 33).is_none());
    }
}
