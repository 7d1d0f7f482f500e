//! The property the PROXY protocol fuzz target checks, shared with the
//! stable test that replays the committed corpus (`tests/fuzz_corpus.rs`).
//!
//! ferrolb writes PROXY headers and never reads them, so what is fuzzed is
//! the writer, differentially: the `ppp` crate (an independent
//! implementation of HAProxy's spec, the parser backends use) must read
//! every header ferrolb writes, for any pair of addresses, as exactly the
//! addresses given.

use ferrolb_balance::proxy_protocol::{v1, v2};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A socket address from the input: IPv4, IPv6, or IPv4-mapped IPv6.
fn addr(data: &mut &[u8]) -> Option<SocketAddr> {
    let (&kind, rest) = data.split_first()?;
    let (port, rest) = rest.split_first_chunk::<2>()?;
    let port = u16::from_be_bytes(*port);
    let (ip, rest): (IpAddr, &[u8]) = match kind % 3 {
        0 => {
            let (a, rest) = rest.split_first_chunk::<4>()?;
            (Ipv4Addr::from(*a).into(), rest)
        }
        1 => {
            let (a, rest) = rest.split_first_chunk::<16>()?;
            (Ipv6Addr::from(*a).into(), rest)
        }
        _ => {
            let (a, rest) = rest.split_first_chunk::<4>()?;
            (Ipv4Addr::from(*a).to_ipv6_mapped().into(), rest)
        }
    };
    *data = rest;
    Some(SocketAddr::new(ip, port))
}

/// What a reader should see: v4-mapped addresses unmapped.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Both versions, for two addresses taken from the input.
pub fn proxy(mut data: &[u8]) {
    let (Some(client), Some(local)) = (addr(&mut data), addr(&mut data)) else {
        return;
    };
    let (c, l) = (unmapped(client), unmapped(local));
    let same_family = c.is_ipv4() == l.is_ipv4();

    let text = v1(client, local);
    // The spec's longest v1 header is 107 bytes.
    assert!(text.len() <= 107, "{} bytes", text.len());
    let text = std::str::from_utf8(&text).expect("v1 is ASCII");
    let h = ppp::v1::Header::try_from(text).expect("ppp reads our v1 header");
    let want = if !same_family {
        ppp::v1::Addresses::Unknown
    } else {
        match (c, l) {
            (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                ppp::v1::Addresses::new_tcp4(*c.ip(), *l.ip(), c.port(), l.port())
            }
            (SocketAddr::V6(c), SocketAddr::V6(l)) => {
                ppp::v1::Addresses::new_tcp6(*c.ip(), *l.ip(), c.port(), l.port())
            }
            _ => unreachable!("same family"),
        }
    };
    assert_eq!(h.addresses, want);

    let bin = v2(client, local);
    let h = ppp::v2::Header::try_from(bin.as_slice()).expect("ppp reads our v2 header");
    assert_eq!(h.command, ppp::v2::Command::Proxy);
    assert_eq!(h.len(), bin.len(), "the header claims exactly its bytes");
    if same_family {
        assert_eq!(h.protocol, ppp::v2::Protocol::Stream);
        let want: ppp::v2::Addresses = (c, l).into();
        assert_eq!(h.addresses, want);
    } else {
        assert_eq!(h.addresses, ppp::v2::Addresses::Unspecified);
    }
}
