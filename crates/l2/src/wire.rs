//! Ethernet, ARP and IPv6 neighbour discovery frames: parsed from bytes
//! into plain structs and emitted back, with no I/O. Parsing validates every
//! field the responder relies on (RFC 826, RFC 4861 section 7.1) and returns
//! a typed error for anything else, so malformed or foreign frames can be
//! counted and dropped.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: Mac = Mac([0; 6]);

    /// The Ethernet multicast address of an IPv6 multicast group (33:33 + low 32 bits).
    pub fn ipv6_multicast(group: Ipv6Addr) -> Mac {
        let o = group.octets();
        Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }

    /// Whether the group bit is set (multicast or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address"));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
        }
        Ok(Mac(m))
    }
}

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER: usize = 40;
const ICMPV6: u8 = 58;
const NS: u8 = 135;
const NA: u8 = 136;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;

/// Why a frame was not understood. Each is counted by the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its headers say.
    #[error("truncated frame")]
    Truncated,
    /// Neither ARP nor IPv6 (not ours to answer).
    #[error("not ARP or IPv6")]
    Foreign,
    /// ARP for another hardware or protocol type, or bad lengths.
    #[error("unsupported ARP variant")]
    BadArp,
    /// IPv6 that is not ICMPv6 neighbour discovery (not ours to answer).
    #[error("not neighbour discovery")]
    NotNdp,
    /// Violates RFC 4861 7.1 (hop limit, code, lengths, options, addresses).
    #[error("invalid neighbour discovery message")]
    BadNdp,
    /// ICMPv6 checksum mismatch.
    #[error("bad ICMPv6 checksum")]
    BadChecksum,
}

/// An ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has TPA?
    Request,
    /// SPA is at SHA.
    Reply,
}

/// An ARP packet (Ethernet/IPv4 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// A neighbour discovery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ndp {
    /// Neighbour solicitation.
    Solicit {
        /// The address being resolved.
        target: Ipv6Addr,
        /// The source link-layer address option, if present.
        source_lla: Option<Mac>,
    },
    /// Neighbour advertisement.
    Advert {
        /// The address advertised.
        target: Ipv6Addr,
        /// Router flag.
        router: bool,
        /// Solicited flag.
        solicited: bool,
        /// Override flag.
        override_: bool,
        /// The target link-layer address option, if present.
        target_lla: Option<Mac>,
    },
}

/// The parts of a frame the responder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// ARP.
    Arp(Arp),
    /// IPv6 neighbour discovery.
    Ndp {
        /// IPv6 source.
        src: Ipv6Addr,
        /// IPv6 destination.
        dst: Ipv6Addr,
        /// The message.
        msg: Ndp,
    },
}

/// A parsed Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Destination MAC.
    pub dst: Mac,
    /// Source MAC.
    pub src: Mac,
    /// Payload.
    pub packet: Packet,
}

fn mac_at(b: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&b[at..at + 6]);
    Mac(m)
}

fn v6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(a)
}

/// The solicited-node multicast group of `addr` (ff02::1:ffXX:XXXX).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The all-nodes group ff02::1.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// ICMPv6 checksum over the pseudo-header and `msg` (RFC 4443 2.3).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            let word = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], 0])
            };
            sum += word as u32;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses an Ethernet frame carrying ARP or ICMPv6 neighbour discovery.
pub fn parse(b: &[u8]) -> Result<Frame, WireError> {
    if b.len() < ETH_HEADER {
        return Err(WireError::Truncated);
    }
    let dst = mac_at(b, 0);
    let src = mac_at(b, 6);
    let ethertype = u16::from_be_bytes([b[12], b[13]]);
    let p = &b[ETH_HEADER..];
    let packet = match ethertype {
        ETHERTYPE_ARP => Packet::Arp(parse_arp(p)?),
        ETHERTYPE_IPV6 => parse_ndp(p)?,
        _ => return Err(WireError::Foreign),
    };
    Ok(Frame { dst, src, packet })
}

fn parse_arp(p: &[u8]) -> Result<Arp, WireError> {
    if p.len() < ARP_LEN {
        return Err(WireError::Truncated);
    }
    // Ethernet (1), IPv4 (0x0800), 6-byte MACs, 4-byte addresses: anything else is not ours.
    if p[0..2] != [0, 1] || p[2..4] != [0x08, 0x00] || p[4] != 6 || p[5] != 4 {
        return Err(WireError::BadArp);
    }
    let op = match u16::from_be_bytes([p[6], p[7]]) {
        1 => ArpOp::Request,
        2 => ArpOp::Reply,
        _ => return Err(WireError::BadArp),
    };
    Ok(Arp {
        op,
        sha: mac_at(p, 8),
        spa: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        tha: mac_at(p, 18),
        tpa: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
    })
}

fn parse_ndp(p: &[u8]) -> Result<Packet, WireError> {
    if p.len() < IPV6_HEADER {
        return Err(WireError::Truncated);
    }
    if p[0] >> 4 != 6 {
        return Err(WireError::NotNdp);
    }
    let payload_len = u16::from_be_bytes([p[4], p[5]]) as usize;
    // No extension headers: RFC 4861 messages are sent without them in practice.
    if p[6] != ICMPV6 {
        return Err(WireError::NotNdp);
    }
    let hop_limit = p[7];
    let src = v6_at(p, 8);
    let dst = v6_at(p, 24);
    if p.len() < IPV6_HEADER + payload_len {
        return Err(WireError::Truncated);
    }
    let icmp = &p[IPV6_HEADER..IPV6_HEADER + payload_len];
    if icmp.len() < 4 {
        return Err(WireError::Truncated);
    }
    let kind = icmp[0];
    if kind != NS && kind != NA {
        return Err(WireError::NotNdp);
    }
    // RFC 4861 7.1.1/7.1.2: hop limit 255 (not forwarded), code 0, at least 24 bytes.
    if hop_limit != 255 || icmp[1] != 0 || icmp.len() < 24 {
        return Err(WireError::BadNdp);
    }
    // Summed with its checksum in place, a correct message sums to all ones
    // (RFC 1071): verified without copying it.
    if icmpv6_checksum(src, dst, icmp) != 0 {
        return Err(WireError::BadChecksum);
    }
    let target = v6_at(icmp, 8);
    if target.is_multicast() {
        return Err(WireError::BadNdp);
    }
    // Options: every one must have a non-zero length and fit.
    let mut lla = None;
    let mut opts = &icmp[24..];
    while !opts.is_empty() {
        if opts.len() < 2 || opts[1] == 0 || opts.len() < opts[1] as usize * 8 {
            return Err(WireError::BadNdp);
        }
        let len = opts[1] as usize * 8;
        let wanted = if kind == NS {
            OPT_SOURCE_LLA
        } else {
            OPT_TARGET_LLA
        };
        if opts[0] == wanted && len >= 8 {
            lla = Some(mac_at(opts, 2));
        }
        opts = &opts[len..];
    }
    let msg = if kind == NS {
        // From the unspecified address (DAD): only to a solicited-node group, never with a source LLA.
        if src.is_unspecified() && (lla.is_some() || dst.segments()[..6] != [0xff02, 0, 0, 0, 0, 1])
        {
            return Err(WireError::BadNdp);
        }
        Ndp::Solicit {
            target,
            source_lla: lla,
        }
    } else {
        let flags = icmp[4];
        let solicited = flags & 0x40 != 0;
        // A solicited advertisement to a multicast address is invalid (7.1.2).
        if solicited && dst.is_multicast() {
            return Err(WireError::BadNdp);
        }
        Ndp::Advert {
            target,
            router: flags & 0x80 != 0,
            solicited,
            override_: flags & 0x20 != 0,
            target_lla: lla,
        }
    };
    Ok(Packet::Ndp { src, dst, msg })
}

/// The longest frame `emit` writes: Ethernet + IPv6 + an NA with one option.
pub const MAX_FRAME: usize = ETH_HEADER + IPV6_HEADER + 24 + 8;

/// An emitted frame, held inline: answering a request allocates nothing,
/// which keeps the responder's cost flat under an ARP or NDP flood.
#[derive(Clone, Copy)]
pub struct FrameBuf {
    buf: [u8; MAX_FRAME],
    len: usize,
}

impl FrameBuf {
    fn new() -> FrameBuf {
        FrameBuf {
            buf: [0; MAX_FRAME],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The frame's bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for FrameBuf {
    fn eq(&self, other: &FrameBuf) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for FrameBuf {}

impl std::fmt::Debug for FrameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameBuf({:02x?})", self.as_slice())
    }
}

/// Writes an Ethernet frame for `frame` (ARP padded to the 60-byte minimum).
pub fn emit(frame: &Frame) -> FrameBuf {
    let mut out = FrameBuf::new();
    out.put(&frame.dst.0);
    out.put(&frame.src.0);
    match frame.packet {
        Packet::Arp(a) => {
            out.put(&ETHERTYPE_ARP.to_be_bytes());
            out.put(&[0, 1, 0x08, 0x00, 6, 4]);
            out.put(&(if a.op == ArpOp::Request { 1u16 } else { 2 }).to_be_bytes());
            out.put(&a.sha.0);
            out.put(&a.spa.octets());
            out.put(&a.tha.0);
            out.put(&a.tpa.octets());
            // The buffer is zeroed: padding is a length change.
            out.len = 60;
        }
        Packet::Ndp { src, dst, msg } => {
            out.put(&ETHERTYPE_IPV6.to_be_bytes());
            let mut icmp = [0u8; 32];
            let icmp_len = match msg {
                Ndp::Solicit { target, source_lla } => {
                    icmp[0] = NS;
                    icmp[8..24].copy_from_slice(&target.octets());
                    if let Some(m) = source_lla {
                        icmp[24] = OPT_SOURCE_LLA;
                        icmp[25] = 1;
                        icmp[26..32].copy_from_slice(&m.0);
                        32
                    } else {
                        24
                    }
                }
                Ndp::Advert {
                    target,
                    router,
                    solicited,
                    override_,
                    target_lla,
                } => {
                    icmp[0] = NA;
                    icmp[4] = (router as u8) << 7 | (solicited as u8) << 6 | (override_ as u8) << 5;
                    icmp[8..24].copy_from_slice(&target.octets());
                    if let Some(m) = target_lla {
                        icmp[24] = OPT_TARGET_LLA;
                        icmp[25] = 1;
                        icmp[26..32].copy_from_slice(&m.0);
                        32
                    } else {
                        24
                    }
                }
            };
            let icmp = &mut icmp[..icmp_len];
            let sum = icmpv6_checksum(src, dst, icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            out.put(&[0x60, 0, 0, 0]);
            out.put(&(icmp_len as u16).to_be_bytes());
            out.put(&[ICMPV6, 255]);
            out.put(&src.octets());
            out.put(&dst.octets());
            out.put(icmp);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn arp_request_golden_bytes() {
        // who-has 192.0.2.10 tell 192.0.2.1, from 02:00:00:00:00:01, broadcast.
        let mut b = vec![0xff; 6];
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        b.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1, 192, 0, 2, 1]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 10]);
        let f = parse(&b).unwrap();
        assert_eq!(f.dst, Mac::BROADCAST);
        assert_eq!(
            f.packet,
            Packet::Arp(Arp {
                op: ArpOp::Request,
                sha: mac("02:00:00:00:00:01"),
                spa: "192.0.2.1".parse().unwrap(),
                tha: Mac::ZERO,
                tpa: "192.0.2.10".parse().unwrap(),
            })
        );
        // Emit pads to 60 bytes and round-trips.
        let out = emit(&f);
        assert_eq!(out.len(), 60);
        assert_eq!(&out[..42], &b[..]);
        assert_eq!(parse(&out).unwrap(), f);
    }

    #[test]
    fn rejects_foreign_and_broken_arp() {
        let ok = emit(&Frame {
            dst: Mac::BROADCAST,
            src: mac("02:00:00:00:00:01"),
            packet: Packet::Arp(Arp {
                op: ArpOp::Request,
                sha: mac("02:00:00:00:00:01"),
                spa: Ipv4Addr::UNSPECIFIED,
                tha: Mac::ZERO,
                tpa: Ipv4Addr::LOCALHOST,
            }),
        });
        assert_eq!(parse(&ok[..20]), Err(WireError::Truncated));
        let mut ipv4 = ok.to_vec();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(parse(&ipv4), Err(WireError::Foreign));
        let mut bad_op = ok.to_vec();
        bad_op[21] = 9;
        assert_eq!(parse(&bad_op), Err(WireError::BadArp));
        let mut bad_hlen = ok.to_vec();
        bad_hlen[18] = 8;
        assert_eq!(parse(&bad_hlen), Err(WireError::BadArp));
    }

    #[test]
    fn solicited_node_and_multicast_mac() {
        let a: Ipv6Addr = "2001:db8::1234:5678".parse().unwrap();
        assert_eq!(
            solicited_node(a),
            "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            Mac::ipv6_multicast(solicited_node(a)),
            mac("33:33:ff:34:56:78")
        );
    }

    fn ns(src: &str, dst: &str, target: &str, lla: Option<Mac>) -> Vec<u8> {
        emit(&Frame {
            dst: Mac::ipv6_multicast(dst.parse().unwrap()),
            src: mac("02:00:00:00:00:01"),
            packet: Packet::Ndp {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                msg: Ndp::Solicit {
                    target: target.parse().unwrap(),
                    source_lla: lla,
                },
            },
        })
        .to_vec()
    }

    #[test]
    fn ndp_round_trip_and_validation() {
        let b = ns(
            "2001:db8::1",
            "ff02::1:ff00:10",
            "2001:db8::10",
            Some(mac("02:00:00:00:00:01")),
        );
        let f = parse(&b).unwrap();
        assert_eq!(parse(&emit(&f)).unwrap(), f);
        // Hop limit other than 255: forwarded by a router, must be ignored.
        let mut hop = b.clone();
        hop[14 + 7] = 64;
        assert_eq!(parse(&hop), Err(WireError::BadNdp));
        // Corrupted checksum.
        let mut sum = b.clone();
        sum[14 + 40 + 2] ^= 0xff;
        assert_eq!(parse(&sum), Err(WireError::BadChecksum));
        // DAD (unspecified source) with a source LLA is invalid.
        let dad = ns(
            "::",
            "ff02::1:ff00:10",
            "2001:db8::10",
            Some(mac("02:00:00:00:00:01")),
        );
        assert_eq!(parse(&dad), Err(WireError::BadNdp));
        let dad = ns("::", "ff02::1:ff00:10", "2001:db8::10", None);
        assert!(parse(&dad).is_ok());
        // Multicast target is invalid.
        assert_eq!(
            parse(&ns("2001:db8::1", "ff02::1:ff00:10", "ff02::1", None)),
            Err(WireError::BadNdp)
        );
        // A zero-length option is invalid (and would loop forever in a careless parser).
        let mut zero = ns(
            "2001:db8::1",
            "ff02::1:ff00:10",
            "2001:db8::10",
            Some(mac("02:00:00:00:00:01")),
        );
        let opt = 14 + 40 + 24;
        zero[opt + 1] = 0;
        // Fix the checksum so only the option is wrong.
        let icmp_start = 14 + 40;
        zero[icmp_start + 2] = 0;
        zero[icmp_start + 3] = 0;
        let s = icmpv6_checksum(
            "2001:db8::1".parse().unwrap(),
            "ff02::1:ff00:10".parse().unwrap(),
            &zero[icmp_start..],
        );
        zero[icmp_start + 2..icmp_start + 4].copy_from_slice(&s.to_be_bytes());
        assert_eq!(parse(&zero), Err(WireError::BadNdp));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_valid_frames_never_panic(pos in 0usize..94, val in any::<u8>()) {
            let mut b = ns("2001:db8::1", "ff02::1:ff00:10", "2001:db8::10", Some(mac("02:00:00:00:00:01")));
            if pos < b.len() {
                b[pos] = val;
            }
            let _ = parse(&b);
            let _ = parse(&b[..pos.min(b.len())]);
        }

        #[test]
        fn arp_round_trips(op in any::<bool>(), sha in any::<[u8; 6]>(), spa in any::<u32>(), tha in any::<[u8; 6]>(), tpa in any::<u32>()) {
            let f = Frame {
                dst: Mac::BROADCAST,
                src: Mac(sha),
                packet: Packet::Arp(Arp { op: if op { ArpOp::Request } else { ArpOp::Reply }, sha: Mac(sha), spa: spa.into(), tha: Mac(tha), tpa: tpa.into() }),
            };
            prop_assert_eq!(parse(&emit(&f)).unwrap(), f);
        }
    }
}
