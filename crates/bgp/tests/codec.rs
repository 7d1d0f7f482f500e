//! Golden bytes, round trips, error mapping and packing of the BGP codec.

use ferrolb_bgp::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";
const FOUR: Wire = Wire { four_octet: true };
const TWO: Wire = Wire { four_octet: false };

fn p(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn round_trip(m: &Message, s: &Wire) -> Message {
    let bytes = encode(m, s);
    let (back, used) = decode(&bytes, s).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    back
}

#[test]
fn keepalive_golden() {
    let b = encode(&Message::Keepalive, &FOUR);
    assert_eq!(b, hex(&format!("{MARKER} 0013 04")));
    assert_eq!(round_trip(&Message::Keepalive, &FOUR), Message::Keepalive);
}

#[test]
fn open_golden_and_round_trip() {
    let open = Open {
        asn: 65001,
        hold_time: 90,
        router_id: "192.0.2.1".parse().unwrap(),
        capabilities: vec![
            Capability::Multiprotocol(Afi::Ipv4, 1),
            Capability::RouteRefresh,
            Capability::FourOctetAs(65001),
        ],
    };
    let b = encode(&Message::Open(open.clone()), &FOUR);
    assert_eq!(
        b,
        hex(&format!(
            "{MARKER} 002d 01  04 fde9 005a c0000201  10 02 0e 01040001 0001 0200 4104 0000fde9"
        ))
    );
    assert_eq!(
        round_trip(&Message::Open(open.clone()), &FOUR),
        Message::Open(open)
    );
}

#[test]
fn open_with_four_octet_asn_uses_as_trans() {
    let open = Open {
        asn: 4_200_000_001,
        hold_time: 3,
        router_id: "10.0.0.1".parse().unwrap(),
        capabilities: vec![
            Capability::FourOctetAs(4_200_000_001),
            Capability::GracefulRestart(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![(Afi::Ipv4, 1, true), (Afi::Ipv6, 1, false)],
            }),
            Capability::Unknown {
                code: 73,
                value: b"host".to_vec(),
            },
        ],
    };
    let b = encode(&Message::Open(open.clone()), &FOUR);
    assert_eq!(&b[20..22], &AS_TRANS.to_be_bytes());
    let Message::Open(back) = round_trip(&Message::Open(open.clone()), &FOUR) else {
        panic!()
    };
    assert_eq!(back, open, "unknown capabilities are kept");
    assert!(back.four_octet_as());
}

#[test]
fn update_golden_four_octet() {
    let u = Update {
        attrs: Attrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment::Sequence(vec![65001])]),
            next_hop: Some("192.0.2.1".parse().unwrap()),
            ..Attrs::default()
        },
        nlri: vec![p("203.0.113.10/32")],
        ..Update::default()
    };
    let b = encode(&Message::Update(u.clone()), &FOUR);
    assert_eq!(b, hex(&format!("{MARKER} 0030 02  0000 0014 400101 00 400206 0201 0000fde9 400304 c0000201  20 cb00710a")));
    assert_eq!(
        round_trip(&Message::Update(u.clone()), &FOUR),
        Message::Update(u)
    );
}

#[test]
fn two_octet_session_carries_as4_path() {
    let u = Update {
        attrs: Attrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![Segment::Sequence(vec![4_200_000_001, 65001])]),
            next_hop: Some("192.0.2.1".parse().unwrap()),
            ..Attrs::default()
        },
        nlri: vec![p("203.0.113.10/32")],
        ..Update::default()
    };
    let b = encode(&Message::Update(u.clone()), &TWO);
    let body = hex("400206 0202 5ba0 fde9");
    assert!(
        b.windows(body.len()).any(|w| w == body),
        "AS_PATH with AS_TRANS"
    );
    let as4 = hex("c0110a 0202 fa56ea01 0000fde9");
    assert!(
        b.windows(as4.len()).any(|w| w == as4),
        "AS4_PATH with the real ASNs: {b:02x?}"
    );
    // The receiving side merges them back (RFC 6793).
    assert_eq!(
        round_trip(&Message::Update(u.clone()), &TWO),
        Message::Update(u)
    );
}

#[test]
fn ipv6_and_communities_round_trip() {
    let u = Update {
        withdrawn: vec![p("198.51.100.0/24")],
        attrs: Attrs {
            origin: Some(Origin::Igp),
            as_path: Some(vec![
                Segment::Sequence(vec![64512, 64513]),
                Segment::Set(vec![1, 2]),
            ]),
            med: Some(10),
            local_pref: Some(200),
            communities: vec![(65000 << 16) | 100, 0xFFFF_FF01],
            large_communities: vec![(4_200_000_001, 1, 2)],
            mp_reach: Some(MpReach {
                afi: Afi::Ipv6,
                safi: 1,
                next_hops: vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()],
                prefixes: vec![p("2001:db8:1::10/128"), p("2001:db8:2::/48")],
            }),
            other: vec![RawAttr {
                flags: 0xc0,
                code: 99,
                value: vec![1, 2, 3],
            }],
            ..Attrs::default()
        },
        nlri: vec![],
    };
    assert_eq!(
        round_trip(&Message::Update(u.clone()), &FOUR),
        Message::Update(u)
    );
}

#[test]
fn end_of_rib_markers() {
    let v4 = Update::end_of_rib(Afi::Ipv4);
    assert_eq!(
        encode(&Message::Update(v4.clone()), &FOUR),
        hex(&format!("{MARKER} 0017 02 0000 0000"))
    );
    assert_eq!(v4.is_end_of_rib(), Some(Afi::Ipv4));
    let v6 = Update::end_of_rib(Afi::Ipv6);
    let Message::Update(back) = round_trip(&Message::Update(v6), &FOUR) else {
        panic!()
    };
    assert_eq!(back.is_end_of_rib(), Some(Afi::Ipv6));
}

#[test]
fn shutdown_notification_rfc9003() {
    let n = Notification::shutdown("maintenance: node drained");
    let b = encode(&Message::Notification(n.clone()), &FOUR);
    assert_eq!(&b[19..22], &[6, 2, 25]);
    let Message::Notification(back) = round_trip(&Message::Notification(n), &FOUR) else {
        panic!()
    };
    assert_eq!(back.shutdown_message(), Some("maintenance: node drained"));
    let long = "é".repeat(200);
    assert!(
        Notification::shutdown(&long).data.len() <= 256,
        "cut to 255 bytes on a char boundary"
    );
    assert!(Notification::shutdown(&long).shutdown_message().is_some());
}

#[test]
fn route_refresh_round_trip() {
    let m = Message::RouteRefresh(RouteRefresh {
        afi: Afi::Ipv6,
        safi: 1,
    });
    assert_eq!(round_trip(&m, &FOUR), m);
}

#[test]
fn partial_input_asks_for_more() {
    let b = encode(&Message::Keepalive, &FOUR);
    assert_eq!(decode(&b[..10], &FOUR), Ok(None));
    assert_eq!(decode(&b[..18], &FOUR), Ok(None));
    let two = [b.clone(), b.clone()].concat();
    let (_, used) = decode(&two, &FOUR).unwrap().unwrap();
    assert_eq!(used, 19);
}

fn err(bytes: &[u8], s: &Wire) -> DecodeError {
    decode(bytes, s).expect_err("must be refused")
}

#[test]
fn header_and_open_errors_map_to_rfc4271_codes() {
    let mut bad_marker = encode(&Message::Keepalive, &FOUR);
    bad_marker[3] = 0;
    assert_eq!(
        (
            err(&bad_marker, &FOUR).code,
            err(&bad_marker, &FOUR).subcode
        ),
        (1, 1)
    );
    let too_long = hex(&format!("{MARKER} 1388 04"));
    assert_eq!(
        (err(&too_long, &FOUR).code, err(&too_long, &FOUR).subcode),
        (1, 2)
    );
    let ka_len = hex(&format!("{MARKER} 0014 04 00"));
    assert_eq!(err(&ka_len, &FOUR).subcode, 2);
    let unknown = hex(&format!("{MARKER} 0013 09"));
    assert_eq!(
        (
            err(&unknown, &FOUR).subcode,
            err(&unknown, &FOUR).data.clone()
        ),
        (3, vec![9])
    );

    let open = |body: &str| hex(&format!("{MARKER} {:04x} 01 {body}", 19 + hex(body).len()));
    let e = err(&open("03 fde9 005a c0000201 00"), &FOUR);
    assert_eq!((e.code, e.subcode, e.data.clone()), (2, 1, vec![0, 4]));
    assert_eq!(
        err(&open("04 fde9 0002 c0000201 00"), &FOUR).subcode,
        6,
        "hold time 2"
    );
    assert_eq!(
        err(&open("04 fde9 005a 00000000 00"), &FOUR).subcode,
        3,
        "identifier 0"
    );
    assert_eq!(
        err(&open("04 fde9 005a c0000201 03 01 01 00"), &FOUR).subcode,
        4,
        "authentication parameter"
    );
    assert_eq!(
        err(&open("04 fde9 005a c0000201 08 02 06 4104 0000fdea"), &FOUR).subcode,
        2,
        "AS mismatch"
    );
    assert_eq!(
        err(&open("04 fde9 005a c0000201 05 02 03 4104"), &FOUR).subcode,
        0,
        "truncated capability"
    );
    let e = err(&open("03 fde9 005a c0000201 00"), &FOUR);
    assert_eq!(e.action, Action::SessionReset);
    assert_eq!(e.notification().code, 2);
}

fn update_bytes(attrs: &str, nlri: &str) -> Vec<u8> {
    let a = hex(attrs);
    let n = hex(nlri);
    let body = [&[0u8, 0][..], &(a.len() as u16).to_be_bytes(), &a, &n].concat();
    [
        hex(MARKER),
        ((19 + body.len()) as u16).to_be_bytes().to_vec(),
        vec![2],
        body,
    ]
    .concat()
}

#[test]
fn update_errors_follow_rfc7606() {
    let good_path = "400206 0201 0000fde9";
    let nh = "400304 c0000201";
    // Attribute length beyond the list: the list is broken, reset.
    let e = err(&update_bytes("400105 00", "20cb00710a"), &FOUR);
    assert_eq!((e.code, e.subcode, e.action), (3, 1, Action::SessionReset));
    // Invalid ORIGIN value: treat as withdraw, with the routes.
    let e = err(
        &update_bytes(&format!("400101 07 {good_path} {nh}"), "20cb00710a"),
        &FOUR,
    );
    assert_eq!((e.subcode, e.action), (6, Action::TreatAsWithdraw));
    assert_eq!(e.routes, vec![p("203.0.113.10/32")]);
    // Missing NEXT_HOP for IPv4 NLRI.
    let e = err(
        &update_bytes(&format!("400101 00 {good_path}"), "20cb00710a"),
        &FOUR,
    );
    assert_eq!(
        (e.subcode, e.action, e.data.clone()),
        (3, Action::TreatAsWithdraw, vec![])
    );
    // Well-known attribute flagged optional.
    let e = err(
        &update_bytes(&format!("c00101 00 {good_path} {nh}"), "20cb00710a"),
        &FOUR,
    );
    assert_eq!(e.subcode, 4);
    // Bad NEXT_HOP value.
    let e = err(
        &update_bytes(
            &format!("400101 00 {good_path} 400304 00000000"),
            "20cb00710a",
        ),
        &FOUR,
    );
    assert_eq!((e.subcode, e.action), (8, Action::TreatAsWithdraw));
    // Communities length not a multiple of 4.
    let e = err(
        &update_bytes(
            &format!("400101 00 {good_path} {nh} c00803 000001"),
            "20cb00710a",
        ),
        &FOUR,
    );
    assert_eq!((e.subcode, e.action), (5, Action::TreatAsWithdraw));
    // Malformed AS_PATH (segment longer than the attribute).
    let e = err(
        &update_bytes(&format!("400101 00 400203 0205 00 {nh}"), "20cb00710a"),
        &FOUR,
    );
    assert_eq!((e.subcode, e.action), (11, Action::TreatAsWithdraw));
    // An unknown attribute with the Optional bit clear: unrecognized well-known.
    let e = err(
        &update_bytes(
            &format!("400101 00 {good_path} {nh} 40f102 abcd"),
            "20cb00710a",
        ),
        &FOUR,
    );
    assert_eq!(
        (e.code, e.subcode, e.action),
        (3, 2, Action::TreatAsWithdraw)
    );
    assert_eq!(e.routes, vec![p("203.0.113.10/32")]);
    // An unknown optional transitive one is kept, and its extended-length bit
    // (an encoding detail) does not survive, so it re-encodes the same.
    let bytes = update_bytes(
        &format!("400101 00 {good_path} {nh} d0f10002 abcd"),
        "20cb00710a",
    );
    let (m, _) = decode(&bytes, &FOUR).unwrap().unwrap();
    let Message::Update(u) = &m else { panic!() };
    assert_eq!(
        (u.attrs.other[0].flags, u.attrs.other[0].code),
        (0xc0, 0xf1)
    );
    let again = encode(&m, &FOUR);
    assert_eq!(decode(&again, &FOUR).unwrap().unwrap().0, m);
    // Malformed MP_REACH: reset.
    let e = err(&update_bytes("800e03 000201", ""), &FOUR);
    assert_eq!((e.subcode, e.action), (9, Action::SessionReset));
    // NLRI prefix length 33: reset.
    let e = err(
        &update_bytes(&format!("400101 00 {good_path} {nh}"), "21cb00710a00"),
        &FOUR,
    );
    assert_eq!((e.subcode, e.action), (10, Action::SessionReset));
    // A duplicate ORIGIN is ignored, the first one counts.
    let (m, _) = decode(
        &update_bytes(
            &format!("400101 00 400101 02 {good_path} {nh}"),
            "20cb00710a",
        ),
        &FOUR,
    )
    .unwrap()
    .unwrap();
    let Message::Update(u) = m else { panic!() };
    assert_eq!(u.attrs.origin, Some(Origin::Igp));
}

fn decode_all(msgs: &[Vec<u8>], s: &Wire) -> (Vec<Prefix>, Vec<Prefix>) {
    let mut ann = Vec::new();
    let mut wd = Vec::new();
    for m in msgs {
        assert!(m.len() <= MAX_LEN, "{} bytes", m.len());
        let (msg, used) = decode(m, s).unwrap().unwrap();
        assert_eq!(used, m.len());
        let Message::Update(u) = msg else { panic!() };
        ann.extend(u.nlri.iter().copied());
        if let Some(r) = &u.attrs.mp_reach {
            ann.extend(r.prefixes.iter().copied());
        }
        wd.extend(u.withdrawn.iter().copied());
        if let Some(r) = &u.attrs.mp_unreach {
            wd.extend(r.prefixes.iter().copied());
        }
    }
    (ann, wd)
}

#[test]
fn packing_fills_messages_and_loses_nothing() {
    let attrs = Attrs {
        origin: Some(Origin::Igp),
        as_path: Some(vec![Segment::Sequence(vec![64512])]),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        communities: vec![0xFFFF_FF01],
        ..Attrs::default()
    };
    let mut prefixes: Vec<Prefix> = (0..10_000u32)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap())
        .collect();
    prefixes.extend(
        (0..3_000u128)
            .map(|i| Prefix::new(IpAddr::V6((0x2001_0db8_u128 << 96 | i).into()), 128).unwrap()),
    );
    let msgs = pack(
        &attrs,
        &prefixes,
        Some("2001:db8::1".parse().unwrap()),
        &FOUR,
    );
    let (ann, _) = decode_all(&msgs, &FOUR);
    assert_eq!(ann, prefixes);
    // 10,000 /32s at 5 bytes (50 KB) and 3,000 /128s at 17 bytes (51 KB): 13 full messages per family.
    assert_eq!(msgs.len(), 26);
    let total: usize = msgs.iter().map(|m| m.len()).sum();
    assert!(
        total / msgs.len() > 3_800,
        "messages are packed full: {} bytes on average",
        total / msgs.len()
    );
    let wd = pack_withdrawals(&prefixes, &FOUR);
    let (_, withdrawn) = decode_all(&wd, &FOUR);
    assert_eq!(withdrawn, prefixes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn decode_never_panics(kind in 1u8..6, body in prop::collection::vec(any::<u8>(), 0..120), four in any::<bool>()) {
        let mut b = vec![0xff; 16];
        b.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        b.push(kind);
        b.extend_from_slice(&body);
        let _ = decode(&b, &Wire { four_octet: four });
    }

    #[test]
    fn updates_round_trip(v4 in prop::collection::vec((any::<u32>(), 0u8..=32), 0..20),
                          v6 in prop::collection::vec((any::<u128>(), 0u8..=128), 0..20),
                          asns in prop::collection::vec(1u32..u32::MAX, 1..8), med in any::<Option<u32>>(), four in any::<bool>()) {
        let s = Wire { four_octet: four };
        let nlri: Vec<Prefix> = v4.iter().map(|(a, l)| Prefix::new(IpAddr::V4((*a).into()), *l).unwrap()).collect();
        let v6: Vec<Prefix> = v6.iter().map(|(a, l)| Prefix::new(IpAddr::V6((*a).into()), *l).unwrap()).collect();
        let u = Update {
            withdrawn: nlri.clone(),
            attrs: Attrs {
                origin: Some(Origin::Igp),
                as_path: Some(vec![Segment::Sequence(asns)]),
                next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
                med,
                mp_reach: (!v6.is_empty()).then(|| MpReach { afi: Afi::Ipv6, safi: 1, next_hops: vec!["2001:db8::1".parse().unwrap()], prefixes: v6 }),
                ..Attrs::default()
            },
            nlri,
        };
        let bytes = encode(&Message::Update(u.clone()), &s);
        prop_assume!(bytes.len() <= MAX_LEN);
        let (back, _) = decode(&bytes, &s).unwrap().unwrap();
        prop_assert_eq!(back, Message::Update(u));
    }
}
