//! The property the netlink fuzz target checks, shared with the stable test
//! that replays the committed corpus (`tests/fuzz_corpus.rs`).

use ferrolb_netlink::link::parse_links;
use ferrolb_netlink::{encode_local_route, parse_acks, parse_route_get, parse_routes};
use std::net::IpAddr;

/// Whatever the socket delivers: the route, link and acknowledgement
/// parsers (and the route lookup's) never panic, report only host routes and only named links. A route message ferrolb itself
/// writes, for an address taken from the input, parses back to that address
/// as one of ferrolb's local routes, whatever bytes follow it.
pub fn replies(data: &[u8]) {
    let (routes, _) = parse_routes(data);
    for r in &routes {
        assert!(matches!(r.dst, IpAddr::V4(_) | IpAddr::V6(_)));
    }
    let _ = parse_acks(data);
    if let Ok(w) = parse_route_get(data, 0) {
        assert!(w
            .prefsrc
            .is_none_or(|a| matches!(a, IpAddr::V4(_) | IpAddr::V6(_))));
    }
    for l in parse_links(data).0 {
        assert!(l.index != 0 && !l.name.is_empty(), "{l:?}");
    }
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (vip, rest): (IpAddr, &[u8]) = if pick % 2 == 0 {
        let Some((a, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        ((*a).into(), rest)
    } else {
        let Some((a, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        ((*a).into(), rest)
    };
    let Some((ifindex, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let mut msg = encode_local_route(u32::from(pick), vip, u32::from_ne_bytes(*ifindex));
    msg.extend_from_slice(rest);
    let (routes, _) = parse_routes(&msg);
    let first = routes.first().expect("our own route message parses");
    assert_eq!(first.dst, vip);
    assert!(first.is_ferrolb_local(), "{first:?}");
}
