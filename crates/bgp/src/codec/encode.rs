//! One message to bytes.

use super::*;
use std::net::IpAddr;

/// Encodes a message. UPDATEs longer than [`MAX_LEN`] must be split first
/// ([`pack`] does).
pub fn encode(msg: &Message, s: &Wire) -> Vec<u8> {
    match msg {
        Message::Open(o) => frame(1, &encode_open(o)),
        Message::Update(u) => frame(2, &encode_update(u, s)),
        Message::Notification(n) => {
            let mut b = vec![n.code, n.subcode];
            b.extend_from_slice(&n.data);
            frame(3, &b)
        }
        Message::Keepalive => frame(4, &[]),
        Message::RouteRefresh(r) => {
            let mut b = r.afi.code().to_be_bytes().to_vec();
            b.extend_from_slice(&[0, r.safi]);
            frame(5, &b)
        }
    }
}

pub(super) fn encode_open(o: &Open) -> Vec<u8> {
    let mut caps = Vec::new();
    for c in &o.capabilities {
        let (code, value): (u8, Vec<u8>) = match c {
            Capability::Multiprotocol(afi, safi) => {
                let mut v = afi.code().to_be_bytes().to_vec();
                v.extend_from_slice(&[0, *safi]);
                (1, v)
            }
            Capability::RouteRefresh => (2, Vec::new()),
            Capability::GracefulRestart(gr) => {
                let head = (if gr.restarting { 0x8000u16 } else { 0 }) | (gr.restart_time & 0x0fff);
                let mut v = head.to_be_bytes().to_vec();
                for (afi, safi, fwd) in &gr.families {
                    v.extend_from_slice(&afi.code().to_be_bytes());
                    v.extend_from_slice(&[*safi, if *fwd { 0x80 } else { 0 }]);
                }
                (64, v)
            }
            Capability::FourOctetAs(asn) => (65, asn.to_be_bytes().to_vec()),
            Capability::Unknown { code, value } => (*code, value.clone()),
        };
        caps.push(code);
        caps.push(value.len() as u8);
        caps.extend_from_slice(&value);
    }
    let mut b = vec![4];
    let my_as = u16::try_from(o.asn).unwrap_or(AS_TRANS);
    b.extend_from_slice(&my_as.to_be_bytes());
    b.extend_from_slice(&o.hold_time.to_be_bytes());
    b.extend_from_slice(&o.router_id.octets());
    if caps.is_empty() {
        b.push(0);
    } else {
        // One optional parameter (type 2) holding every capability.
        b.push(caps.len() as u8 + 2);
        b.push(2);
        b.push(caps.len() as u8);
        b.extend_from_slice(&caps);
    }
    b
}

pub(super) fn put_prefix(out: &mut Vec<u8>, p: &Prefix) {
    out.push(p.len());
    let bytes = (p.len() as usize).div_ceil(8);
    match p.addr() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..bytes]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..bytes]),
    }
}

pub(super) fn put_attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 || flags & EXTENDED != 0 {
        out.extend_from_slice(&[flags | EXTENDED, code]);
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, code, value.len() as u8]);
    }
    out.extend_from_slice(value);
}

pub(super) fn encode_path(segments: &[Segment], four: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for seg in segments {
        let (kind, asns) = match seg {
            Segment::Set(a) => (1, a),
            Segment::Sequence(a) => (2, a),
            Segment::Confed(k, a) => (*k, a),
        };
        // A segment holds at most 255 ASNs; longer ones are split.
        for chunk in asns.chunks(255) {
            v.push(kind);
            v.push(chunk.len() as u8);
            for asn in chunk {
                if four {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    v.extend_from_slice(&u16::try_from(*asn).unwrap_or(AS_TRANS).to_be_bytes());
                }
            }
        }
    }
    v
}

pub(super) fn encode_attrs(a: &Attrs, s: &Wire) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(o) = a.origin {
        put_attr(&mut out, TRANSITIVE, ORIGIN, &[o as u8]);
    }
    if let Some(path) = &a.as_path {
        put_attr(
            &mut out,
            TRANSITIVE,
            AS_PATH,
            &encode_path(path, s.four_octet),
        );
    }
    if let Some(nh) = a.next_hop {
        put_attr(&mut out, TRANSITIVE, NEXT_HOP, &nh.octets());
    }
    if let Some(m) = a.med {
        put_attr(&mut out, OPTIONAL, MED, &m.to_be_bytes());
    }
    if let Some(lp) = a.local_pref {
        put_attr(&mut out, TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        put_attr(&mut out, OPTIONAL | TRANSITIVE, COMMUNITIES, &v);
    }
    if let Some(r) = &a.mp_reach {
        let mut v = r.afi.code().to_be_bytes().to_vec();
        v.push(r.safi);
        let nh: Vec<u8> = r
            .next_hops
            .iter()
            .flat_map(|h| match h {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            })
            .collect();
        v.push(nh.len() as u8);
        v.extend_from_slice(&nh);
        v.push(0);
        for p in &r.prefixes {
            put_prefix(&mut v, p);
        }
        put_attr(&mut out, OPTIONAL | EXTENDED, MP_REACH, &v);
    }
    if let Some(u) = &a.mp_unreach {
        let mut v = u.afi.code().to_be_bytes().to_vec();
        v.push(u.safi);
        for p in &u.prefixes {
            put_prefix(&mut v, p);
        }
        put_attr(&mut out, OPTIONAL | EXTENDED, MP_UNREACH, &v);
    }
    // A 2-octet session cannot carry ASNs above 65535 in AS_PATH: they travel in AS4_PATH (RFC 6793).
    if let (false, Some(path)) = (s.four_octet, &a.as_path) {
        let needs = path.iter().any(|seg| match seg {
            Segment::Set(x) | Segment::Sequence(x) | Segment::Confed(_, x) => {
                x.iter().any(|n| *n > 0xffff)
            }
        });
        if needs {
            put_attr(
                &mut out,
                OPTIONAL | TRANSITIVE,
                AS4_PATH,
                &encode_path(path, true),
            );
        }
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|(g, d1, d2)| [g.to_be_bytes(), d1.to_be_bytes(), d2.to_be_bytes()].concat())
            .collect();
        put_attr(&mut out, OPTIONAL | TRANSITIVE, LARGE_COMMUNITIES, &v);
    }
    for r in &a.other {
        put_attr(&mut out, r.flags & !EXTENDED, r.code, &r.value);
    }
    out
}

pub(super) fn encode_update(u: &Update, s: &Wire) -> Vec<u8> {
    let mut w = Vec::new();
    for p in &u.withdrawn {
        put_prefix(&mut w, p);
    }
    let attrs = encode_attrs(&u.attrs, s);
    let mut b = (w.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(&w);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    for p in &u.nlri {
        put_prefix(&mut b, p);
    }
    b
}

pub(super) fn prefix_bytes(p: &Prefix) -> usize {
    1 + (p.len() as usize).div_ceil(8)
}
