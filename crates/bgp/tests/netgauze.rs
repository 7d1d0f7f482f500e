//! Cross-decoding: every kind of message this codec encodes is parsed by an
//! independent implementation, `netgauze-bgp-pkt` (strict mode: malformed
//! attributes and capability errors fail), and what it reads must match what
//! was meant: prefixes, AS path, attributes, OPEN fields, NOTIFICATION codes.
//! Our own decoder agreeing with our own encoder proves less; this catches a
//! shared misreading of the RFCs.

use ferrolb_bgp::*;
use netgauze_bgp_pkt::nlri::{Ipv4UnicastAddress, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute::{AsPath, MpReach as NgReach, MpUnreach as NgUnreach};
use netgauze_bgp_pkt::path_attribute::{PathAttributeValue as V, PathAttributeValue};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};

const FOUR: Wire = Wire { four_octet: true };
const TWO: Wire = Wire { four_octet: false };

/// Parses `bytes` with netgauze; the whole buffer must be one message.
fn ng(bytes: &[u8], s: &Wire) -> BgpMessage {
    let mut ctx = BgpParsingContext::default();
    ctx.set_asn4(s.four_octet);
    let mut cur = SliceReader::new(bytes);
    let m = BgpMessage::parse(&mut cur, &mut ctx)
        .unwrap_or_else(|e| panic!("netgauze refused {bytes:02x?}: {e:?}"));
    assert_eq!(cur.offset(), bytes.len(), "netgauze read the whole message");
    m
}

fn v4(a: &Ipv4UnicastAddress) -> String {
    a.network().to_string()
}

fn v6(a: &Ipv6UnicastAddress) -> String {
    a.network().to_string()
}

/// What netgauze saw in an UPDATE, in our terms.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    withdrawn: Vec<String>,
    nlri: Vec<String>,
    mp_reach: Vec<String>,
    mp_unreach: Vec<String>,
    as_path: Vec<u32>,
    next_hop: Option<Ipv4Addr>,
    med: Option<u32>,
    local_pref: Option<u32>,
    communities: usize,
    large_communities: usize,
    origin: bool,
}

fn seen(m: &BgpMessage) -> Seen {
    let BgpMessage::Update(u) = m else {
        panic!("not an UPDATE: {m:?}")
    };
    let mut s = Seen {
        withdrawn: u.withdraw_routes().iter().map(v4).collect(),
        nlri: u.nlri().iter().map(v4).collect(),
        ..Seen::default()
    };
    for a in u.path_attributes() {
        let value: &PathAttributeValue = a.value();
        match value {
            V::Origin(_) => s.origin = true,
            V::AsPath(AsPath::As4PathSegments(segs)) => {
                s.as_path = segs.iter().flat_map(|g| g.as_numbers().to_vec()).collect()
            }
            V::AsPath(AsPath::As2PathSegments(segs)) => {
                // A 2-octet session: AS4_PATH (below) carries the real path when present.
                if s.as_path.is_empty() {
                    s.as_path = segs
                        .iter()
                        .flat_map(|g| g.as_numbers().iter().map(|a| *a as u32))
                        .collect()
                }
            }
            V::As4Path(p) => {
                s.as_path = p
                    .segments()
                    .iter()
                    .flat_map(|g| g.as_numbers().to_vec())
                    .collect()
            }
            V::NextHop(n) => s.next_hop = Some(n.next_hop()),
            V::MultiExitDiscriminator(m) => s.med = Some(m.metric()),
            V::LocalPreference(l) => s.local_pref = Some(l.metric()),
            V::Communities(c) => s.communities = c.communities().len(),
            V::LargeCommunities(c) => s.large_communities = c.communities().len(),
            V::MpReach(NgReach::Ipv6Unicast { nlri, .. }) => {
                s.mp_reach = nlri.iter().map(v6).collect()
            }
            V::MpUnreach(NgUnreach::Ipv6Unicast { nlri }) => {
                s.mp_unreach = nlri.iter().map(v6).collect()
            }
            other => panic!("unexpected attribute {other:?}"),
        }
    }
    s
}

/// What we meant, in the same terms.
fn meant(u: &Update) -> Seen {
    let strs = |p: &[Prefix]| p.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let as_path = u
        .attrs
        .as_path
        .iter()
        .flatten()
        .flat_map(|seg| match seg {
            Segment::Sequence(a) | Segment::Set(a) => a.clone(),
            Segment::Confed(_, a) => a.clone(),
        })
        .collect();
    Seen {
        withdrawn: strs(&u.withdrawn),
        nlri: strs(&u.nlri),
        mp_reach: u
            .attrs
            .mp_reach
            .as_ref()
            .map(|r| strs(&r.prefixes))
            .unwrap_or_default(),
        mp_unreach: u
            .attrs
            .mp_unreach
            .as_ref()
            .map(|r| strs(&r.prefixes))
            .unwrap_or_default(),
        as_path,
        next_hop: u.attrs.next_hop,
        med: u.attrs.med,
        local_pref: u.attrs.local_pref,
        communities: u.attrs.communities.len(),
        large_communities: u.attrs.large_communities.len(),
        origin: u.attrs.origin.is_some(),
    }
}

fn p(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn full_update() -> Update {
    Update {
        withdrawn: vec![p("198.51.100.0/24"), p("203.0.113.7/32")],
        attrs: Attrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment::Sequence(vec![4_200_000_001, 65001])]),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 11)),
            med: Some(10),
            local_pref: Some(250),
            communities: vec![0xFDE8_0064, 0xFFFF_FF01],
            large_communities: vec![(65001, 1, 2)],
            ..Attrs::default()
        },
        nlri: vec![p("203.0.113.10/32"), p("203.0.113.16/28"), p("10.0.0.0/8")],
    }
}

#[test]
fn updates_read_the_same_in_netgauze_on_four_and_two_octet_sessions() {
    for s in [FOUR, TWO] {
        let u = full_update();
        let bytes = encode(&Message::Update(u.clone()), &s);
        assert_eq!(
            seen(&ng(&bytes, &s)),
            meant(&u),
            "four_octet {}",
            s.four_octet
        );
    }
}

#[test]
fn ipv6_reach_and_unreach_read_the_same_in_netgauze() {
    let reach = Update {
        attrs: Attrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment::Sequence(vec![65001])]),
            mp_reach: Some(MpReach {
                afi: Afi::Ipv6,
                safi: SAFI_UNICAST,
                next_hops: vec!["2001:db8::11".parse().unwrap()],
                prefixes: vec![p("2001:db8:100::10/128"), p("2001:db8:200::/48")],
            }),
            ..Attrs::default()
        },
        ..Update::default()
    };
    let unreach = Update {
        attrs: Attrs {
            mp_unreach: Some(MpUnreach {
                afi: Afi::Ipv6,
                safi: SAFI_UNICAST,
                prefixes: vec![p("2001:db8:100::10/128")],
            }),
            ..Attrs::default()
        },
        ..Update::default()
    };
    for u in [reach, unreach] {
        let bytes = encode(&Message::Update(u.clone()), &FOUR);
        assert_eq!(seen(&ng(&bytes, &FOUR)), meant(&u));
    }
}

#[test]
fn end_of_rib_markers_are_end_of_rib_for_netgauze() {
    for afi in [Afi::Ipv4, Afi::Ipv6] {
        let bytes = encode(&Message::Update(Update::end_of_rib(afi)), &FOUR);
        let BgpMessage::Update(u) = ng(&bytes, &FOUR) else {
            panic!("not an UPDATE")
        };
        assert!(u.end_of_rib().is_some(), "{afi:?}: {u:?}");
    }
}

#[test]
fn open_with_every_capability_reads_the_same() {
    for asn in [65001u32, 4_200_000_001] {
        let open = Open {
            asn,
            hold_time: 9,
            router_id: Ipv4Addr::new(192, 0, 2, 11),
            capabilities: vec![
                Capability::Multiprotocol(Afi::Ipv4, SAFI_UNICAST),
                Capability::Multiprotocol(Afi::Ipv6, SAFI_UNICAST),
                Capability::RouteRefresh,
                Capability::GracefulRestart(GracefulRestart {
                    restarting: false,
                    restart_time: 120,
                    families: vec![
                        (Afi::Ipv4, SAFI_UNICAST, true),
                        (Afi::Ipv6, SAFI_UNICAST, true),
                    ],
                }),
                Capability::FourOctetAs(asn),
            ],
        };
        let bytes = encode(&Message::Open(open), &FOUR);
        let BgpMessage::Open(o) = ng(&bytes, &FOUR) else {
            panic!("not an OPEN")
        };
        assert_eq!(o.version(), 4);
        assert_eq!(o.my_asn4(), asn);
        let two = if asn > 65535 { AS_TRANS } else { asn as u16 };
        assert_eq!(
            o.my_as(),
            two,
            "2-octet field (AS_TRANS when it does not fit)"
        );
        assert_eq!(o.hold_time(), 9);
        assert_eq!(o.bgp_id(), Ipv4Addr::new(192, 0, 2, 11));
        assert_eq!(o.capabilities().len(), 5, "{:?}", o.capabilities());
    }
}

#[test]
fn keepalive_notification_and_route_refresh_read_the_same() {
    assert!(matches!(
        ng(&encode(&Message::Keepalive, &FOUR), &FOUR),
        BgpMessage::KeepAlive
    ));
    let n = Notification::shutdown("maintenance: draining node-3");
    match ng(&encode(&Message::Notification(n), &FOUR), &FOUR) {
        BgpMessage::Notification(got) => {
            let text = format!("{got:?}");
            assert!(text.contains("Cease"), "{text}");
            assert!(text.contains("AdministrativeShutdown"), "{text}");
        }
        other => panic!("not a NOTIFICATION: {other:?}"),
    }
    for afi in [Afi::Ipv4, Afi::Ipv6] {
        let r = RouteRefresh {
            afi,
            safi: SAFI_UNICAST,
        };
        assert!(matches!(
            ng(&encode(&Message::RouteRefresh(r), &FOUR), &FOUR),
            BgpMessage::RouteRefresh(_)
        ));
    }
}

#[test]
fn ten_thousand_packed_routes_read_the_same() {
    let attrs = Attrs {
        origin: Some(Origin::Igp),
        as_path: Some(vec![Segment::Sequence(vec![65001])]),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 11)),
        communities: vec![0xFDE8_0064],
        ..Attrs::default()
    };
    let prefixes: Vec<Prefix> = (0..10_000u32)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap())
        .collect();
    let mut got = Vec::new();
    for m in pack(&attrs, &prefixes, None, &FOUR) {
        got.extend(seen(&ng(&m, &FOUR)).nlri);
    }
    let want: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
    assert_eq!(got, want);
    let mut gone = Vec::new();
    for m in pack_withdrawals(&prefixes, &FOUR) {
        gone.extend(seen(&ng(&m, &FOUR)).withdrawn);
    }
    assert_eq!(gone, want);
}

/// Unicast only: netgauze refuses multicast prefixes in unicast NLRI.
fn unicast_v4() -> impl Strategy<Value = Prefix> {
    (1u32..0xE000_0000, 1u8..=32)
        .prop_map(|(a, l)| Prefix::new(IpAddr::V4(a.into()), l).unwrap())
        .prop_filter("netgauze: first octet of a unicast prefix", |p| {
            !p.to_string().starts_with("0.")
        })
}

fn unicast_v6() -> impl Strategy<Value = Prefix> {
    (any::<u128>(), 1u8..=128).prop_map(|(a, l)| {
        // 2000::/3 keeps the address unicast whatever the length.
        let a = (a >> 3) | (1u128 << 125);
        Prefix::new(IpAddr::V6(a.into()), l).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn random_updates_read_the_same_in_netgauze(
        nlri in prop::collection::vec(unicast_v4(), 0..30),
        withdrawn in prop::collection::vec(unicast_v4(), 0..30),
        v6 in prop::collection::vec(unicast_v6(), 0..20),
        asns in prop::collection::vec(1u32..u32::MAX, 1..8),
        med in any::<Option<u32>>(),
        local_pref in any::<Option<u32>>(),
        communities in prop::collection::vec(any::<u32>(), 0..6),
        large in prop::collection::vec(any::<(u32, u32, u32)>(), 0..4),
        four in any::<bool>(),
    ) {
        let s = Wire { four_octet: four };
        let u = Update {
            withdrawn,
            attrs: Attrs {
                origin: Some(Origin::Igp),
                as_path: Some(vec![Segment::Sequence(asns)]),
                next_hop: (!nlri.is_empty()).then_some(Ipv4Addr::new(192, 0, 2, 1)),
                med,
                local_pref,
                communities,
                large_communities: large,
                mp_reach: (!v6.is_empty()).then(|| MpReach {
                    afi: Afi::Ipv6,
                    safi: SAFI_UNICAST,
                    next_hops: vec!["2001:db8::1".parse().unwrap()],
                    prefixes: v6,
                }),
                ..Attrs::default()
            },
            nlri,
        };
        let bytes = encode(&Message::Update(u.clone()), &s);
        prop_assume!(bytes.len() <= MAX_LEN);
        prop_assert_eq!(seen(&ng(&bytes, &s)), meant(&u));
    }
}
