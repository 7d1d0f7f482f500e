//! Many prefixes into as few UPDATEs as fit.

use super::encode::{encode, encode_attrs, prefix_bytes};
use super::*;
use std::net::{IpAddr, Ipv6Addr};

/// Encodes announcements of `prefixes` (both families) with the same
/// attributes into as few UPDATEs as fit in [`MAX_LEN`] each. IPv4 routes go
/// in the NLRI field with `attrs.next_hop`; IPv6 routes in MP_REACH with
/// `next_hop_v6`.
pub fn pack(
    attrs: &Attrs,
    prefixes: &[Prefix],
    next_hop_v6: Option<Ipv6Addr>,
    s: &Wire,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let v4: Vec<Prefix> = prefixes
        .iter()
        .copied()
        .filter(|p| p.afi() == Afi::Ipv4)
        .collect();
    let v6: Vec<Prefix> = prefixes
        .iter()
        .copied()
        .filter(|p| p.afi() == Afi::Ipv6)
        .collect();
    if !v4.is_empty() {
        let base = HEADER_LEN + 4 + encode_attrs(attrs, s).len();
        let mut chunk: Vec<Prefix> = Vec::new();
        let mut size = base;
        for p in v4 {
            if size + prefix_bytes(&p) > MAX_LEN {
                let u = Update {
                    withdrawn: vec![],
                    attrs: attrs.clone(),
                    nlri: std::mem::take(&mut chunk),
                };
                out.push(encode(&Message::Update(u), s));
                size = base;
            }
            size += prefix_bytes(&p);
            chunk.push(p);
        }
        out.push(encode(
            &Message::Update(Update {
                withdrawn: vec![],
                attrs: attrs.clone(),
                nlri: chunk,
            }),
            s,
        ));
    }
    if !v6.is_empty() {
        let mut a6 = attrs.clone();
        a6.next_hop = None;
        a6.mp_reach = Some(MpReach {
            afi: Afi::Ipv6,
            safi: SAFI_UNICAST,
            next_hops: next_hop_v6.map(IpAddr::V6).into_iter().collect(),
            prefixes: Vec::new(),
        });
        let base = HEADER_LEN + 4 + encode_attrs(&a6, s).len();
        let mut chunk: Vec<Prefix> = Vec::new();
        let mut size = base;
        let flush = |chunk: Vec<Prefix>, a6: &Attrs| {
            let mut a = a6.clone();
            if let Some(r) = a.mp_reach.as_mut() {
                r.prefixes = chunk;
            }
            encode(
                &Message::Update(Update {
                    attrs: a,
                    ..Update::default()
                }),
                s,
            )
        };
        for p in v6 {
            if size + prefix_bytes(&p) > MAX_LEN {
                out.push(flush(std::mem::take(&mut chunk), &a6));
                size = base;
            }
            size += prefix_bytes(&p);
            chunk.push(p);
        }
        out.push(flush(chunk, &a6));
    }
    out
}

/// Encodes withdrawals of `prefixes` (both families) into as few UPDATEs as fit.
pub fn pack_withdrawals(prefixes: &[Prefix], s: &Wire) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for afi in [Afi::Ipv4, Afi::Ipv6] {
        let list: Vec<Prefix> = prefixes
            .iter()
            .copied()
            .filter(|p| p.afi() == afi)
            .collect();
        if list.is_empty() {
            continue;
        }
        let base = HEADER_LEN + 4 + if afi == Afi::Ipv6 { 4 + 3 } else { 0 };
        let mut chunk = Vec::new();
        let mut size = base;
        let make = |chunk: Vec<Prefix>| {
            let u = if afi == Afi::Ipv4 {
                Update {
                    withdrawn: chunk,
                    ..Update::default()
                }
            } else {
                Update {
                    attrs: Attrs {
                        mp_unreach: Some(MpUnreach {
                            afi,
                            safi: SAFI_UNICAST,
                            prefixes: chunk,
                        }),
                        ..Attrs::default()
                    },
                    ..Update::default()
                }
            };
            encode(&Message::Update(u), s)
        };
        for p in list {
            if size + prefix_bytes(&p) > MAX_LEN {
                out.push(make(std::mem::take(&mut chunk)));
                size = base;
            }
            size += prefix_bytes(&p);
            chunk.push(p);
        }
        out.push(make(chunk));
    }
    out
}
