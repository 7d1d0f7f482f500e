//! Bytes to one message, every length and attribute checked.

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A cursor over received bytes; running out is an error of the caller's choosing.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

/// Decodes one message from the start of `buf`. Returns `Ok(None)` when
/// more bytes are needed, or the message and how many bytes it used.
pub fn decode(buf: &[u8], s: &Wire) -> Result<Option<(Message, usize)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(DecodeError::reset(
            HDR,
            1,
            vec![],
            "connection not synchronised (bad marker)",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]) as usize;
    let kind = buf[18];
    let min = match kind {
        1 => 29,
        2 => 23,
        3 => 21,
        4 => 19,
        5 => 23,
        _ => {
            return Err(DecodeError::reset(
                HDR,
                3,
                vec![kind],
                "unknown message type",
            ))
        }
    };
    if len < min || len > MAX_LEN || (kind == 4 && len != 19) {
        return Err(DecodeError::reset(
            HDR,
            2,
            (len as u16).to_be_bytes().to_vec(),
            "bad message length",
        ));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[HEADER_LEN..len];
    let msg = match kind {
        1 => Message::Open(decode_open(body)?),
        2 => Message::Update(decode_update(body, s)?),
        3 => Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        4 => Message::Keepalive,
        _ => {
            if body.len() != 4 {
                return Err(DecodeError::reset(
                    HDR,
                    2,
                    (len as u16).to_be_bytes().to_vec(),
                    "bad ROUTE-REFRESH length",
                ));
            }
            Message::RouteRefresh(RouteRefresh {
                afi: Afi::from_code(u16::from_be_bytes([body[0], body[1]])),
                safi: body[3],
            })
        }
    };
    Ok(Some((msg, len)))
}

fn open_err(subcode: u8, data: Vec<u8>, reason: &'static str) -> DecodeError {
    DecodeError::reset(OPEN_ERR, subcode, data, reason)
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let mut r = Reader { b: body };
    let malformed = || open_err(0, vec![], "malformed OPEN");
    let version = r.u8().ok_or_else(malformed)?;
    if version != 4 {
        return Err(open_err(
            1,
            4u16.to_be_bytes().to_vec(),
            "unsupported BGP version",
        ));
    }
    let my_as = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    if hold_time == 1 || hold_time == 2 {
        return Err(open_err(
            6,
            vec![],
            "unacceptable hold time (1 or 2 seconds)",
        ));
    }
    let id = Ipv4Addr::from(r.u32().ok_or_else(malformed)?);
    if id.is_unspecified() {
        return Err(open_err(3, vec![], "bad BGP identifier 0.0.0.0"));
    }
    let params_len = r.u8().ok_or_else(malformed)? as usize;
    let params = r.take(params_len).ok_or_else(malformed)?;
    if !r.is_empty() {
        return Err(malformed());
    }
    let mut p = Reader { b: params };
    let mut capabilities = Vec::new();
    while !p.is_empty() {
        let ptype = p.u8().ok_or_else(malformed)?;
        let plen = p.u8().ok_or_else(malformed)? as usize;
        let pval = p.take(plen).ok_or_else(malformed)?;
        if ptype != 2 {
            return Err(open_err(4, vec![], "unsupported optional parameter"));
        }
        let mut c = Reader { b: pval };
        while !c.is_empty() {
            let code = c.u8().ok_or_else(malformed)?;
            let clen = c.u8().ok_or_else(malformed)? as usize;
            let v = c.take(clen).ok_or_else(malformed)?;
            capabilities.push(decode_capability(code, v).ok_or_else(malformed)?);
        }
    }
    let four = capabilities.iter().find_map(|c| {
        if let Capability::FourOctetAs(a) = c {
            Some(*a)
        } else {
            None
        }
    });
    let asn = match four {
        Some(a) => {
            // The 2-octet field must agree: the ASN itself, or AS_TRANS for larger ones.
            if my_as != AS_TRANS && my_as as u32 != a {
                return Err(open_err(
                    2,
                    vec![],
                    "AS in OPEN disagrees with the 4-octet AS capability",
                ));
            }
            a
        }
        None => my_as as u32,
    };
    if asn == 0 {
        return Err(open_err(2, vec![], "bad peer AS 0"));
    }
    Ok(Open {
        asn,
        hold_time,
        router_id: id,
        capabilities,
    })
}

fn decode_capability(code: u8, v: &[u8]) -> Option<Capability> {
    Some(match code {
        1 if v.len() == 4 => {
            Capability::Multiprotocol(Afi::from_code(u16::from_be_bytes([v[0], v[1]])), v[3])
        }
        2 if v.is_empty() => Capability::RouteRefresh,
        64 if v.len() >= 2 && (v.len() - 2).is_multiple_of(4) => {
            let head = u16::from_be_bytes([v[0], v[1]]);
            let families = v[2..]
                .chunks(4)
                .map(|f| {
                    (
                        Afi::from_code(u16::from_be_bytes([f[0], f[1]])),
                        f[2],
                        f[3] & 0x80 != 0,
                    )
                })
                .collect();
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families,
            })
        }
        65 if v.len() == 4 => Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        1 | 2 | 64 | 65 => return None,
        _ => Capability::Unknown {
            code,
            value: v.to_vec(),
        },
    })
}

fn decode_prefixes(mut r: Reader<'_>, afi: Afi) -> Option<Vec<Prefix>> {
    let max = if afi == Afi::Ipv4 { 32 } else { 128 };
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = r.u8()?;
        if len > max {
            return None;
        }
        let bytes = r.take((len as usize).div_ceil(8))?;
        let addr = if afi == Afi::Ipv4 {
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::from(a))
        } else {
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(a))
        };
        out.push(Prefix::new(addr, len)?);
    }
    Some(out)
}

fn decode_path(v: &[u8], four: bool) -> Option<Vec<Segment>> {
    let mut r = Reader { b: v };
    let mut out = Vec::new();
    let width = if four { 4 } else { 2 };
    while !r.is_empty() {
        let kind = r.u8()?;
        let n = r.u8()? as usize;
        if n == 0 {
            return None;
        }
        let raw = r.take(n * width)?;
        let asns: Vec<u32> = raw
            .chunks(width)
            .map(|c| {
                if four {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u16::from_be_bytes([c[0], c[1]]) as u32
                }
            })
            .collect();
        out.push(match kind {
            1 => Segment::Set(asns),
            2 => Segment::Sequence(asns),
            3 | 4 => Segment::Confed(kind, asns),
            _ => return None,
        });
    }
    Some(out)
}

fn path_len(p: &[Segment]) -> usize {
    p.iter()
        .map(|s| match s {
            Segment::Set(_) => 1,
            Segment::Sequence(a) => a.len(),
            Segment::Confed(..) => 0,
        })
        .sum()
}

/// Rebuilds the true path from AS_PATH and AS4_PATH (RFC 6793 4.2.3):
/// the leading ASNs of AS_PATH that AS4_PATH does not cover, then AS4_PATH.
fn merge_as4(path: Vec<Segment>, as4: Vec<Segment>) -> Vec<Segment> {
    let (n, m) = (path_len(&path), path_len(&as4));
    if m > n {
        return path;
    }
    let mut keep = n - m;
    let mut out = Vec::new();
    for seg in path {
        if keep == 0 {
            break;
        }
        match seg {
            Segment::Sequence(a) => {
                let take = a.len().min(keep);
                keep -= take;
                out.push(Segment::Sequence(a[..take].to_vec()));
            }
            Segment::Set(a) => {
                keep -= 1;
                out.push(Segment::Set(a));
            }
            c => out.push(c),
        }
    }
    out.extend(as4);
    out
}

fn decode_update(body: &[u8], s: &Wire) -> Result<Update, DecodeError> {
    let malformed = || DecodeError::reset(UPD, 1, vec![], "malformed attribute list");
    let mut r = Reader { b: body };
    let wlen = r.u16().ok_or_else(malformed)? as usize;
    let wbytes = r.take(wlen).ok_or_else(malformed)?;
    let withdrawn = decode_prefixes(Reader { b: wbytes }, Afi::Ipv4).ok_or_else(malformed)?;
    let alen = r.u16().ok_or_else(malformed)? as usize;
    let abytes = r.take(alen).ok_or_else(malformed)?;
    let nlri = decode_prefixes(Reader { b: r.b }, Afi::Ipv4)
        .ok_or_else(|| DecodeError::reset(UPD, 10, vec![], "invalid network field"))?;

    // First the attribute list structure: a broken one resets the session (RFC 7606 4).
    let mut raw: Vec<(u8, u8, &[u8])> = Vec::new();
    let mut a = Reader { b: abytes };
    while !a.is_empty() {
        let flags = a.u8().ok_or_else(malformed)?;
        let code = a.u8().ok_or_else(malformed)?;
        let len = if flags & EXTENDED != 0 {
            a.u16().ok_or_else(malformed)? as usize
        } else {
            a.u8().ok_or_else(malformed)? as usize
        };
        let value = a.take(len).ok_or_else(malformed)?;
        if raw.iter().any(|(_, c, _)| *c == code) {
            if code == MP_REACH || code == MP_UNREACH {
                return Err(malformed());
            }
            // Other duplicates: the first one counts (RFC 7606 3 g).
            continue;
        }
        raw.push((flags, code, value));
    }

    // Then each attribute's meaning; these errors withdraw the UPDATE's routes but keep the session.
    let mut attrs = Attrs::default();
    let mut routes = nlri.clone();
    let mut as4 = None;
    let mut error: Option<(u8, &'static str)> = None;
    let mut fail = |sub: u8, why: &'static str| {
        if error.is_none() {
            error = Some((sub, why));
        }
    };
    for (flags, code, v) in &raw {
        let well_known = matches!(*code, ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF);
        if well_known && (flags & OPTIONAL != 0 || flags & TRANSITIVE == 0) {
            fail(4, "attribute flags error");
            continue;
        }
        match *code {
            ORIGIN => match v {
                [0] => attrs.origin = Some(Origin::Igp),
                [1] => attrs.origin = Some(Origin::Egp),
                [2] => attrs.origin = Some(Origin::Incomplete),
                _ => fail(6, "invalid ORIGIN"),
            },
            AS_PATH => match decode_path(v, s.four_octet) {
                Some(p) => attrs.as_path = Some(p),
                None => fail(11, "malformed AS_PATH"),
            },
            NEXT_HOP => match v {
                [a, b, c, d] => {
                    let nh = Ipv4Addr::new(*a, *b, *c, *d);
                    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                        fail(8, "invalid NEXT_HOP");
                    } else {
                        attrs.next_hop = Some(nh);
                    }
                }
                _ => fail(5, "NEXT_HOP length"),
            },
            MED | LOCAL_PREF => match v {
                [a, b, c, d] => {
                    let x = u32::from_be_bytes([*a, *b, *c, *d]);
                    if *code == MED {
                        attrs.med = Some(x);
                    } else {
                        attrs.local_pref = Some(x);
                    }
                }
                _ => fail(5, "attribute length error"),
            },
            COMMUNITIES => {
                if v.is_empty() || v.len() % 4 != 0 {
                    fail(5, "COMMUNITIES length");
                } else {
                    attrs.communities = v
                        .chunks(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            LARGE_COMMUNITIES => {
                if v.is_empty() || v.len() % 12 != 0 {
                    fail(5, "LARGE_COMMUNITIES length");
                } else {
                    attrs.large_communities = v
                        .chunks(12)
                        .map(|c| {
                            let w =
                                |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            (w(0), w(4), w(8))
                        })
                        .collect();
                }
            }
            MP_REACH => {
                // MP_REACH errors cannot be contained to some routes: the session resets (RFC 7606 7.11).
                let bad = || DecodeError::reset(UPD, 9, vec![], "malformed MP_REACH_NLRI");
                let mut m = Reader { b: v };
                let afi = Afi::from_code(m.u16().ok_or_else(bad)?);
                let safi = m.u8().ok_or_else(bad)?;
                let nhl = m.u8().ok_or_else(bad)? as usize;
                let nh = m.take(nhl).ok_or_else(bad)?;
                m.u8().ok_or_else(bad)?;
                let next_hops = match (afi, nhl) {
                    (Afi::Ipv6, 16 | 32) => nh
                        .chunks_exact(16)
                        .filter_map(|c| <[u8; 16]>::try_from(c).ok())
                        .map(|a| IpAddr::V6(Ipv6Addr::from(a)))
                        .collect(),
                    (Afi::Ipv4, 4) => vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))],
                    (Afi::Other(_), _) => Vec::new(),
                    _ => return Err(bad()),
                };
                let prefixes = match afi {
                    Afi::Ipv4 | Afi::Ipv6 => decode_prefixes(m, afi).ok_or_else(bad)?,
                    Afi::Other(_) => Vec::new(),
                };
                routes.extend(prefixes.iter().copied());
                attrs.mp_reach = Some(MpReach {
                    afi,
                    safi,
                    next_hops,
                    prefixes,
                });
            }
            MP_UNREACH => {
                let bad = || DecodeError::reset(UPD, 9, vec![], "malformed MP_UNREACH_NLRI");
                let mut m = Reader { b: v };
                let afi = Afi::from_code(m.u16().ok_or_else(bad)?);
                let safi = m.u8().ok_or_else(bad)?;
                let prefixes = match afi {
                    Afi::Ipv4 | Afi::Ipv6 => decode_prefixes(m, afi).ok_or_else(bad)?,
                    Afi::Other(_) => Vec::new(),
                };
                attrs.mp_unreach = Some(MpUnreach {
                    afi,
                    safi,
                    prefixes,
                });
            }
            // A malformed AS4_PATH is discarded and the UPDATE kept (RFC 6793 6).
            AS4_PATH => as4 = decode_path(v, true),
            // An attribute we do not know that claims to be well-known (Optional
            // bit clear) cannot be understood, so neither can the routes (RFC 4271
            // 6.3 subcode 2; withdrawn rather than a reset, as BIRD does under RFC 7606).
            _ if flags & OPTIONAL == 0 => fail(2, "unrecognized well-known attribute"),
            // The extended-length bit is an encoding detail: dropped, so a kept
            // attribute re-encodes to the same meaning at whatever length fits.
            _ => attrs.other.push(RawAttr {
                flags: *flags & !EXTENDED,
                code: *code,
                value: v.to_vec(),
            }),
        }
    }
    if let (false, Some(as4)) = (s.four_octet, as4) {
        if let Some(path) = attrs.as_path.take() {
            attrs.as_path = Some(merge_as4(path, as4));
        }
    }
    let announces = !nlri.is_empty()
        || attrs
            .mp_reach
            .as_ref()
            .is_some_and(|m| !m.prefixes.is_empty());
    if error.is_none() && announces {
        if attrs.origin.is_none() {
            error = Some((3, "missing ORIGIN"));
        } else if attrs.as_path.is_none() {
            error = Some((3, "missing AS_PATH"));
        } else if !nlri.is_empty() && attrs.next_hop.is_none() {
            error = Some((3, "missing NEXT_HOP"));
        }
    }
    if let Some((subcode, reason)) = error {
        return Err(DecodeError {
            code: UPD,
            subcode,
            data: vec![],
            reason,
            action: Action::TreatAsWithdraw,
            routes,
        });
    }
    Ok(Update {
        withdrawn,
        attrs,
        nlri,
    })
}
