//! The rtnetlink messages ferrolb sends and reads: local routes to VIPs
//! (add, replace, delete), route dumps, the kernel's acknowledgements, and
//! (in [`link`]) the macvlan links of virtual MACs.
//! Pure bytes in, bytes out, so every reply the kernel (or anything else on
//! the socket) could send is tested and fuzzed without a socket; the speaker
//! does the I/O (`speaker/src/netlink.rs`).
//!
//! Every route ferrolb adds carries its own protocol number,
//! [`RTPROT_FERROLB`] (`ip route show table local proto 249`), so a
//! restarted speaker and `ferrolb-speaker cleanup-node` find exactly the
//! routes ferrolb made and nothing else.

// This crate decodes bytes from the network: a panic here is a remote crash,
// so nothing may unwrap, expect or panic (tests may: clippy.toml).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;

pub mod link;

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_LOCAL: u8 = 255;
/// The protocol number of ferrolb's routes (unassigned in iproute2's
/// `rt_protos`; name it with `echo "249 ferrolb" > /etc/iproute2/rt_protos.d/ferrolb.conf`).
pub const RTPROT_FERROLB: u8 = 249;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Adding or removing a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `ip route replace`.
    Replace,
    /// `ip route del`.
    Delete,
}

/// One `RTM_NEWROUTE` request equal to `ip route replace local VIP dev IFINDEX
/// table local proto 249`: a host-scope local route, created or replaced,
/// acknowledged.
pub fn encode_local_route(seq: u32, vip: IpAddr, ifindex: u32) -> Vec<u8> {
    encode_route(seq, vip, ifindex, Op::Replace)
}

/// The `RTM_NEWROUTE` or `RTM_DELROUTE` request for ferrolb's local route to `vip`.
pub fn encode_route(seq: u32, vip: IpAddr, ifindex: u32, op: Op) -> Vec<u8> {
    let (family, len, addr): (u8, u8, Vec<u8>) = match vip {
        IpAddr::V4(a) => (AF_INET, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, 128, a.octets().to_vec()),
    };
    let mut m = vec![0u8; 16];
    // struct rtmsg
    m.extend_from_slice(&[
        family,
        len,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_FERROLB,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, RTA_DST, &addr);
    attr(&mut m, RTA_OIF, &ifindex.to_ne_bytes());
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    let (kind, flags) = match op {
        Op::Replace => (
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        ),
        Op::Delete => (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK),
    };
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// An `RTM_GETROUTE` dump request of every route of every family.
pub fn encode_dump(seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[0u8; 12]); // struct rtmsg, AF_UNSPEC: all families
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// An `RTM_GETROUTE` request for the route to `dst`, as `ip route get DST`
/// makes it: the kernel answers with the one route it would use.
pub fn encode_route_get(seq: u32, dst: IpAddr) -> Vec<u8> {
    let (family, len, addr): (u8, u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (AF_INET, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, 128, a.octets().to_vec()),
    };
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[family, len, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, RTA_DST, &addr);
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// The way to a destination, from the answer to [`encode_route_get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Way {
    /// The interface packets leave by.
    pub oif: u32,
    /// This host's source address on it.
    pub prefsrc: Option<IpAddr>,
    /// The next hop, when not on link.
    pub gateway: Option<IpAddr>,
    /// The destination is this host (`RTN_LOCAL`): packets go to `lo`.
    pub local: bool,
}

/// Why a route lookup has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The kernel said no (ENETUNREACH, EHOSTUNREACH, ...).
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Refused(i32),
    /// No answer for this sequence number in the datagram.
    #[error("no route answer in the kernel's reply")]
    NoAnswer,
}

fn ip_from(family: u8, payload: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => <[u8; 4]>::try_from(payload).ok().map(IpAddr::from),
        AF_INET6 => <[u8; 16]>::try_from(payload).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Reads the answer to lookup `seq` from a datagram of the kernel's.
pub fn parse_route_get(buf: &[u8], seq: u32) -> Result<Way, LookupError> {
    for (kind, s, m) in messages(buf) {
        if s != seq {
            continue;
        }
        if kind == NLMSG_ERROR {
            let err = u32_at(m, 16)
                .map(|e| (e as i32).saturating_neg())
                .unwrap_or(0);
            if err != 0 {
                return Err(LookupError::Refused(err));
            }
            continue;
        }
        if kind != RTM_NEWROUTE || m.len() < 28 {
            continue;
        }
        let (family, rtype) = (m[16], m[23]);
        let mut way = Way {
            oif: 0,
            prefsrc: None,
            gateway: None,
            local: rtype == RTN_LOCAL,
        };
        for (akind, payload) in attrs(&m[28..]) {
            match akind {
                RTA_OIF => way.oif = u32_at(payload, 0).unwrap_or(0),
                RTA_PREFSRC => way.prefsrc = ip_from(family, payload),
                RTA_GATEWAY => way.gateway = ip_from(family, payload),
                _ => {}
            }
        }
        return Ok(way);
    }
    Err(LookupError::NoAnswer)
}

/// One route of a dump, as far as ferrolb cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination (host routes only; others are skipped).
    pub dst: IpAddr,
    /// The routing table.
    pub table: u32,
    /// The protocol that made it.
    pub protocol: u8,
    /// `RTN_LOCAL` and so on.
    pub kind: u8,
}

impl Route {
    /// One of ferrolb's local routes: table local, protocol 249, type local.
    pub fn is_ferrolb_local(&self) -> bool {
        self.table == RT_TABLE_LOCAL as u32
            && self.protocol == RTPROT_FERROLB
            && self.kind == RTN_LOCAL
    }
}

/// The native-endian `u32` at `at`, if the buffer holds it.
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The native-endian `u16` at `at`, if the buffer holds it.
fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The messages of a datagram from the kernel: (type, sequence number,
/// the whole message), ending at the first whose length lies.
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32_at(buf, 0)? as usize;
        let kind = u16_at(buf, 4)?;
        let seq = u32_at(buf, 8)?;
        if len < 16 || len > buf.len() {
            return None;
        }
        let msg = &buf[..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, seq, msg))
    })
}

/// The attributes in `b`: (type without the nested and byte-order flags,
/// payload), ending at the first whose length lies.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let alen = u16_at(b, 0)? as usize;
        let akind = u16_at(b, 2)? & 0x3fff;
        if alen < 4 || alen > b.len() {
            return None;
        }
        let payload = &b[4..alen];
        b = &b[((alen + 3) & !3).min(b.len())..];
        Some((akind, payload))
    })
}

/// The host routes in a dump datagram, and whether it ended the dump
/// (`NLMSG_DONE`). Anything malformed is skipped, never trusted.
pub fn parse_routes(buf: &[u8]) -> (Vec<Route>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for (kind, _, m) in messages(buf) {
        if kind == NLMSG_DONE || kind == NLMSG_ERROR {
            done = true;
        }
        if kind != RTM_NEWROUTE || m.len() < 28 {
            continue;
        }
        let rt = &m[16..28];
        let (family, dst_len, table8, protocol, rtype) = (rt[0], rt[1], rt[4], rt[5], rt[7]);
        let mut table = table8 as u32;
        let mut dst = None;
        for (akind, payload) in attrs(&m[28..]) {
            match (akind, family) {
                (RTA_DST, AF_INET) => {
                    if let Ok(a) = <[u8; 4]>::try_from(payload) {
                        dst = Some(IpAddr::from(a));
                    }
                }
                (RTA_DST, AF_INET6) => {
                    if let Ok(a) = <[u8; 16]>::try_from(payload) {
                        dst = Some(IpAddr::from(a));
                    }
                }
                (RTA_TABLE, _) if payload.len() == 4 => {
                    table = u32_at(payload, 0).unwrap_or(table);
                }
                _ => {}
            }
        }
        let host = (family == AF_INET && dst_len == 32) || (family == AF_INET6 && dst_len == 128);
        if let (Some(dst), true) = (dst, host) {
            out.push(Route {
                dst,
                table,
                protocol,
                kind: rtype,
            });
        }
    }
    (out, done)
}

/// The acknowledgements in a datagram from the kernel: sequence number ->
/// errno (0 for success). Anything else, or a truncated message, is skipped.
pub fn parse_acks(buf: &[u8]) -> BTreeMap<u32, i32> {
    let mut out = BTreeMap::new();
    for (kind, seq, m) in messages(buf) {
        if let (NLMSG_ERROR, Some(err)) = (kind, u32_at(m, 16)) {
            let err = err as i32;
            // A kernel errno is small and negative; anything else on the socket
            // (i32::MIN would overflow a plain negation) is reported, not a panic.
            out.insert(seq, err.saturating_neg());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_local_route_requests() {
        let m = encode_local_route(7, "192.0.2.100".parse().unwrap(), 1);
        let mut want = Vec::new();
        want.extend_from_slice(&44u32.to_ne_bytes());
        want.extend_from_slice(&24u16.to_ne_bytes());
        want.extend_from_slice(&0x505u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 32, 0, 0, 255, 249, 254, 2, 0, 0, 0, 0]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[192, 0, 2, 100]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(m, want);
        let m6 = encode_local_route(8, "2001:db8::1".parse().unwrap(), 1);
        assert_eq!(m6.len(), 16 + 12 + 20 + 8);
        assert_eq!(&m6[16..18], &[10, 128]);
        let del = encode_route(9, "192.0.2.100".parse().unwrap(), 1, Op::Delete);
        assert_eq!(&del[4..6], &25u16.to_ne_bytes(), "RTM_DELROUTE");
        assert_eq!(
            &del[6..8],
            &0x5u16.to_ne_bytes(),
            "REQUEST|ACK, no CREATE or REPLACE"
        );
        assert_eq!(&del[16..], &m[16..], "the same route");
        let dump = encode_dump(3);
        assert_eq!(dump.len(), 28);
        assert_eq!(&dump[4..6], &26u16.to_ne_bytes());
        assert_eq!(&dump[6..8], &0x301u16.to_ne_bytes());
    }

    #[test]
    fn route_lookups_are_encoded_and_answers_read() {
        let m = encode_route_get(5, "10.0.0.7".parse().unwrap());
        let mut want = Vec::new();
        want.extend_from_slice(&36u32.to_ne_bytes());
        want.extend_from_slice(&26u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&5u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[10, 0, 0, 7]);
        assert_eq!(m, want);
        assert_eq!(
            encode_route_get(1, "2001:db8::1".parse().unwrap()).len(),
            48
        );
        // An answer: RTM_NEWROUTE, unicast, oif 3, prefsrc, gateway.
        let mut a = vec![0u8; 16];
        a.extend_from_slice(&[2, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0]);
        attr(&mut a, RTA_DST, &[10, 0, 0, 7]);
        attr(&mut a, RTA_OIF, &3u32.to_ne_bytes());
        attr(&mut a, RTA_PREFSRC, &[10, 0, 0, 1]);
        attr(&mut a, RTA_GATEWAY, &[10, 0, 0, 254]);
        let len = a.len() as u32;
        a[0..4].copy_from_slice(&len.to_ne_bytes());
        a[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        a[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(
            parse_route_get(&a, 5),
            Ok(Way {
                oif: 3,
                prefsrc: Some("10.0.0.1".parse().unwrap()),
                gateway: Some("10.0.0.254".parse().unwrap()),
                local: false,
            })
        );
        assert_eq!(parse_route_get(&a, 6), Err(LookupError::NoAnswer));
        // Local type.
        let mut l = a.clone();
        l[23] = RTN_LOCAL;
        assert!(parse_route_get(&l, 5).unwrap().local);
        // An error: ENETUNREACH (101).
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&(-101i32).to_ne_bytes());
        e.extend_from_slice(&m);
        let len = e.len() as u32;
        e[0..4].copy_from_slice(&len.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(parse_route_get(&e, 5), Err(LookupError::Refused(101)));
        // Truncations never panic.
        for cut in 0..a.len() {
            let _ = parse_route_get(&a[..cut], 5);
        }
    }

    /// A dump answer as the kernel writes it: our request bytes are a valid
    /// RTM_NEWROUTE, so they double as the kernel's reply for the parser.
    #[test]
    fn dumps_are_parsed_and_garbage_is_skipped() {
        let mut reply = encode_route(1, "192.0.2.100".parse().unwrap(), 1, Op::Replace);
        reply.extend(encode_route(
            2,
            "2001:db8::7".parse().unwrap(),
            1,
            Op::Replace,
        ));
        let mut other = encode_route(3, "192.0.2.9".parse().unwrap(), 1, Op::Replace);
        other[16 + 1] = 24; // a /24: not a host route
        reply.extend(other);
        let (routes, done) = parse_routes(&reply);
        assert!(!done);
        assert_eq!(
            routes,
            vec![
                Route {
                    dst: "192.0.2.100".parse().unwrap(),
                    table: 255,
                    protocol: 249,
                    kind: 2
                },
                Route {
                    dst: "2001:db8::7".parse().unwrap(),
                    table: 255,
                    protocol: 249,
                    kind: 2
                },
            ]
        );
        let mut end = vec![0u8; 20];
        end[0..4].copy_from_slice(&20u32.to_ne_bytes());
        end[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert!(parse_routes(&end).1, "NLMSG_DONE ends the dump");
        // Truncations and lies about lengths never panic and yield nothing wrong.
        for cut in 0..reply.len() {
            let (r, _) = parse_routes(&reply[..cut]);
            assert!(r.len() <= 2);
        }
        let mut bad = encode_route(4, "192.0.2.1".parse().unwrap(), 1, Op::Replace);
        bad[28..30].copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_routes(&bad).0.is_empty());
    }

    #[test]
    fn an_errno_of_i32_min_is_no_panic() {
        // Found by fuzzing (crates/netlink/fuzz, target `replies`).
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&5u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&i32::MIN.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        assert_eq!(parse_acks(&m).get(&5), Some(&i32::MAX));
    }

    #[test]
    fn acks_and_errors_are_read_and_garbage_is_skipped() {
        let ack = |seq: u32, err: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&err.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        let mut buf = ack(1, 0);
        buf.extend(ack(2, -1));
        let acks = parse_acks(&buf);
        assert_eq!(acks.get(&1), Some(&0));
        assert_eq!(acks.get(&2), Some(&1), "EPERM");
        assert!(parse_acks(&buf[..20]).is_empty() || parse_acks(&buf[..20]).len() <= 1);
        assert!(parse_acks(&[0xff; 7]).is_empty());
        let mut bad = ack(3, 0);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(
            parse_acks(&bad).is_empty(),
            "a length past the buffer stops parsing"
        );
    }
}
