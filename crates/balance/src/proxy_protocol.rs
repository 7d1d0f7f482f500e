//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a
//! backend the original client address.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature that starts every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The v1 (text) header for a TCP connection from `client` to `local`.
/// Mixed families (an IPv4 client on an IPv6 socket) are written in the
/// client's family, with a v4-mapped local address unmapped.
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = normalise(client, local);
    match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            format!("PROXY TCP4 {c} {l} {} {}\r\n", client.port(), local.port()).into_bytes()
        }
        (IpAddr::V6(c), IpAddr::V6(l)) => {
            format!("PROXY TCP6 {c} {l} {} {}\r\n", client.port(), local.port()).into_bytes()
        }
        // Families still differ: the spec's way to say "unknown".
        _ => b"PROXY UNKNOWN\r\n".to_vec(),
    }
}

/// The v2 (binary) header for a TCP connection from `client` to `local`.
pub fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = normalise(client, local);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (client.ip(), local.ip()) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&l.octets());
        }
        (IpAddr::V6(c), IpAddr::V6(l)) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&l.octets());
        }
        _ => {
            out.push(0x00); // AF_UNSPEC
            out.extend_from_slice(&0u16.to_be_bytes());
            return out;
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

/// Unmaps v4-mapped IPv6 addresses so that an IPv4 client on a dual-stack
/// socket is reported as IPv4.
fn normalise(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        _ => a,
    };
    (unmap(client), unmap(local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_golden() {
        assert_eq!(
            v1(sa("192.0.2.1:56324"), sa("203.0.113.10:443")),
            b"PROXY TCP4 192.0.2.1 203.0.113.10 56324 443\r\n"
        );
        assert_eq!(
            v1(sa("[2001:db8::1]:1000"), sa("[2001:db8::2]:80")),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n"
        );
        assert_eq!(
            v1(sa("[::ffff:192.0.2.1]:5"), sa("[::ffff:192.0.2.2]:6")),
            b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"
        );
        assert_eq!(
            v1(sa("192.0.2.1:5"), sa("[2001:db8::2]:6")),
            b"PROXY UNKNOWN\r\n"
        );
    }

    #[test]
    fn v2_golden() {
        let h = v2(sa("192.0.2.1:56324"), sa("203.0.113.10:443"));
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 1, 203, 0, 113, 10, 0xdc, 0x04, 0x01, 0xbb,
        ]);
        assert_eq!(h, want);
        assert_eq!(
            v2(sa("[2001:db8::1]:1"), sa("[2001:db8::2]:2")).len(),
            16 + 36
        );
    }

    #[test]
    fn ppp_crate_parses_our_headers() {
        use ppp::{v1 as p1, v2 as p2};
        let text = v1(sa("192.0.2.1:56324"), sa("203.0.113.10:443"));
        let parsed = p1::Header::try_from(std::str::from_utf8(&text).unwrap()).unwrap();
        assert_eq!(
            parsed.addresses,
            p1::Addresses::new_tcp4([192, 0, 2, 1], [203, 0, 113, 10], 56324, 443)
        );
        for (c, l) in [
            ("192.0.2.1:56324", "203.0.113.10:443"),
            ("[2001:db8::1]:1000", "[2001:db8::2]:80"),
        ] {
            let bin = v2(sa(c), sa(l));
            let parsed = p2::Header::try_from(bin.as_slice()).unwrap();
            assert_eq!(parsed.command, p2::Command::Proxy);
            assert_eq!(parsed.protocol, p2::Protocol::Stream);
            let want: p2::Addresses = (sa(c), sa(l)).into();
            assert_eq!(parsed.addresses, want);
        }
    }
}
