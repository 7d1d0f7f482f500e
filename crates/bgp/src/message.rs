//! BGP-4 messages (RFC 4271) with the extensions ferrolb speaks:
//! capabilities (RFC 5492), multiprotocol (RFC 4760), route refresh (RFC
//! 2918), 4-octet AS numbers (RFC 6793), graceful restart (RFC 4724),
//! communities (RFC 1997), large communities (RFC 8092) and the shutdown
//! communication (RFC 9003). Plain data; encoding and decoding live in
//! `codec`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The 2-octet stand-in for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u16 = 23456;

/// An address family identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Afi {
    /// IPv4 (1).
    Ipv4,
    /// IPv6 (2).
    Ipv6,
    /// Anything else, kept as received.
    Other(u16),
}

impl Afi {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => 1,
            Afi::Ipv6 => 2,
            Afi::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_code(c: u16) -> Afi {
        match c {
            1 => Afi::Ipv4,
            2 => Afi::Ipv6,
            c => Afi::Other(c),
        }
    }
}

/// Unicast, the only SAFI ferrolb announces.
pub const SAFI_UNICAST: u8 = 1;

/// An IPv4 or IPv6 prefix. Host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Builds a prefix, clearing host bits; `None` if `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let addr = match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return None,
        };
        Some(Prefix { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a default route (length 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its address family.
    pub fn afi(&self) -> Afi {
        if self.addr.is_ipv4() {
            Afi::Ipv4
        } else {
            Afi::Ipv6
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Graceful restart capability (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: this speaker has restarted.
    pub restarting: bool,
    /// How long the peer should keep our routes (seconds, 12 bits).
    pub restart_time: u16,
    /// Families with their "forwarding state preserved" bit.
    pub families: Vec<(Afi, u8, bool)>,
}

/// An OPEN capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for a family (code 1).
    Multiprotocol(Afi, u8),
    /// Route refresh (code 2).
    RouteRefresh,
    /// Graceful restart (code 64).
    GracefulRestart(GracefulRestart),
    /// 4-octet AS numbers, with our AS (code 65).
    FourOctetAs(u32),
    /// Anything else: kept, ignored.
    Unknown {
        /// Capability code.
        code: u8,
        /// Its value.
        value: Vec<u8>,
    },
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The sender's AS (the full 4-octet value when the capability is present).
    pub asn: u32,
    /// Proposed hold time, seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Capabilities, in order.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// Whether the OPEN carries the 4-octet AS capability.
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }
}

/// ORIGIN attribute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Learned by an interior protocol (what a VIP is).
    Igp,
    /// Learned by EGP.
    Egp,
    /// Other.
    Incomplete,
}

/// An AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// AS_SET (1).
    Set(Vec<u32>),
    /// AS_SEQUENCE (2).
    Sequence(Vec<u32>),
    /// Confederation segments (3, 4), kept as (type, ASNs).
    Confed(u8, Vec<u32>),
}

/// Multiprotocol reachable NLRI (IPv6 routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// Family.
    pub afi: Afi,
    /// Sub-family.
    pub safi: u8,
    /// Next hops (one global, optionally a link-local second).
    pub next_hops: Vec<IpAddr>,
    /// Announced prefixes.
    pub prefixes: Vec<Prefix>,
}

/// Multiprotocol unreachable NLRI (IPv6 withdrawals; empty = End-of-RIB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// Family.
    pub afi: Afi,
    /// Sub-family.
    pub safi: u8,
    /// Withdrawn prefixes.
    pub prefixes: Vec<Prefix>,
}

/// An attribute ferrolb does not interpret, kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttr {
    /// Flags octet.
    pub flags: u8,
    /// Type code.
    pub code: u8,
    /// Value.
    pub value: Vec<u8>,
}

/// Path attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attrs {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH (with AS4_PATH merged in when the session is 2-octet).
    pub as_path: Option<Vec<Segment>>,
    /// NEXT_HOP (IPv4 routes).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
    /// LARGE_COMMUNITIES.
    pub large_communities: Vec<(u32, u32, u32)>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Others, passed through untouched.
    pub other: Vec<RawAttr>,
}

/// An UPDATE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn IPv4 routes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes.
    pub attrs: Attrs,
    /// Announced IPv4 routes.
    pub nlri: Vec<Prefix>,
}

impl Update {
    /// The End-of-RIB marker for a family (RFC 4724 section 2).
    pub fn end_of_rib(afi: Afi) -> Update {
        match afi {
            Afi::Ipv4 => Update::default(),
            _ => Update {
                attrs: Attrs {
                    mp_unreach: Some(MpUnreach {
                        afi,
                        safi: SAFI_UNICAST,
                        prefixes: Vec::new(),
                    }),
                    ..Attrs::default()
                },
                ..Update::default()
            },
        }
    }

    /// Which family this UPDATE ends the initial table of, if it is an End-of-RIB.
    pub fn is_end_of_rib(&self) -> Option<Afi> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        let a = &self.attrs;
        let no_other = a.origin.is_none()
            && a.as_path.is_none()
            && a.next_hop.is_none()
            && a.mp_reach.is_none()
            && a.med.is_none()
            && a.local_pref.is_none()
            && a.communities.is_empty()
            && a.large_communities.is_empty()
            && a.other.is_empty();
        match &a.mp_unreach {
            None if no_other => Some(Afi::Ipv4),
            Some(u) if no_other && u.prefixes.is_empty() => Some(u.afi),
            _ => None,
        }
    }
}

/// A NOTIFICATION message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Error code.
    pub code: u8,
    /// Error subcode.
    pub subcode: u8,
    /// Data.
    pub data: Vec<u8>,
}

/// Cease (6).
pub const CEASE: u8 = 6;
/// Cease subcode: administrative shutdown (2).
pub const ADMIN_SHUTDOWN: u8 = 2;
/// Cease subcode 7: Connection Collision Resolution (RFC 4486).
pub const COLLISION_RESOLUTION: u8 = 7;

impl Notification {
    /// Cease / administrative shutdown with an RFC 9003 message (cut to 255
    /// bytes on a character boundary), sent when the speaker stops so routers
    /// withdraw its routes at once.
    pub fn shutdown(message: &str) -> Notification {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = vec![end as u8];
        data.extend_from_slice(&message.as_bytes()[..end]);
        Notification {
            code: CEASE,
            subcode: ADMIN_SHUTDOWN,
            data,
        }
    }

    /// Cease, Connection Collision Resolution: sent on the connection given
    /// up when both speakers connected at once.
    pub fn collision() -> Notification {
        Notification {
            code: CEASE,
            subcode: COLLISION_RESOLUTION,
            data: vec![],
        }
    }

    /// The RFC 9003 message of a shutdown notification, if there is a valid one.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != CEASE || !(self.subcode == ADMIN_SHUTDOWN || self.subcode == 4) {
            return None;
        }
        let len = *self.data.first()? as usize;
        std::str::from_utf8(self.data.get(1..1 + len)?).ok()
    }
}

/// A ROUTE-REFRESH message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    /// Family.
    pub afi: Afi,
    /// Sub-family.
    pub safi: u8,
}

/// Any BGP message.
// Messages live one at a time between the socket and the session; boxing the
// large UPDATE would only add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// OPEN (1).
    Open(Open),
    /// UPDATE (2).
    Update(Update),
    /// NOTIFICATION (3).
    Notification(Notification),
    /// KEEPALIVE (4).
    Keepalive,
    /// ROUTE-REFRESH (5).
    RouteRefresh(RouteRefresh),
}
