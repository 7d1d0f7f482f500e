//! A fixed 64-bit hash (FNV-1a followed by a splitmix64 finaliser).
//!
//! Maglev tables and client hashing must agree across hosts, builds and
//! restarts, so nothing here may be seeded randomly (unlike std's
//! `DefaultHasher`).

use std::net::IpAddr;

/// Hashes bytes with FNV-1a and mixes the result so that close inputs
/// spread over the whole 64-bit range.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a client address (the address only, not the port, so every
/// connection of a client lands on the same backend).
pub fn client_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => hash64(&a.octets(), 0),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            // A v4-mapped client is the same client as its IPv4 form.
            Some(v4) => hash64(&v4.octets(), 0),
            None => hash64(&a.octets(), 0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_1: u64 = 15_833_689_265_622_162_035;
    const GOLDEN_2: u64 = 7_494_181_035_122_286_721;

    #[test]
    fn golden_values_never_change() {
        // Changing these breaks consistency between hosts running different versions.
        assert_eq!(hash64(b"", 0), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"10.0.0.1:80", 0), GOLDEN_1);
        assert_eq!(hash64(b"10.0.0.1:80", 7), GOLDEN_2);
        assert_ne!(hash64(b"a", 0), hash64(b"a", 1));
        assert_eq!(
            client_hash("::ffff:10.0.0.1".parse().unwrap()),
            client_hash("10.0.0.1".parse().unwrap())
        );
    }
}
