//! Virtual MACs: with `virtualMac: true`, a VIP group answers ARP/NDP with a
//! MAC of its own, which moves with the group from node to node, so a
//! client's neighbour entry (even a pinned one) stays right across a
//! failover; only the switch's forwarding entry moves. Pure.
//!
//! The MAC is derived from the group's identity, its lowest address: the
//! same on every node with no coordination, stable while the group keeps
//! its addresses, and different between two clusters on one segment (they
//! cannot announce the same address). It is a locally administered unicast
//! address, `02` followed by 40 bits of SHA-256 of the address: not IANA's
//! VRRP range `00:00:5e:00:01:XX`, whose 255 values would have to be handed
//! out by a table (so a group's MAC would change when other groups come and
//! go, breaking the pinned clients the feature exists for) and would clash
//! with the real VRRP routers (keepalived) a migration runs beside
//! (docs/decisions.md). Two groups whose MACs collide (about one chance in
//! 4.4 million for 1,000 groups) are detected here: the later keeps the
//! node MAC, with a warning.

use crate::wire::Mac;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The alias every virtual-MAC link carries (`ip link show` prints it), by
/// which a restarted speaker finds the links an earlier run left behind.
pub const LINK_ALIAS_PREFIX: &str = "ferrolb virtual MAC";

/// The prefix of every virtual-MAC link's name.
pub const LINK_NAME_PREFIX: &str = "flb";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The virtual MAC of the group whose lowest address is `identity`.
pub fn derive(identity: IpAddr) -> Mac {
    let (family, octets): (u8, Vec<u8>) = match identity {
        IpAddr::V4(a) => (4, a.octets().to_vec()),
        IpAddr::V6(a) => (6, a.octets().to_vec()),
    };
    let h = sha256(&[b"ferrolb virtual MAC\0", &[family], &octets]);
    // 0x02: locally administered (bit 1 set), unicast (bit 0 clear).
    Mac([0x02, h[0], h[1], h[2], h[3], h[4]])
}

/// The name of the link holding `mac` on the interface with index
/// `parent`: `flb` and 8 hex digits (Linux names are at most 15 bytes),
/// distinct per parent so one group can be announced on several interfaces.
pub fn link_name(mac: Mac, parent: u32) -> String {
    let h = sha256(&[b"ferrolb link\0", &mac.0, &parent.to_be_bytes()]);
    format!(
        "{LINK_NAME_PREFIX}{:02x}{:02x}{:02x}{:02x}",
        h[0], h[1], h[2], h[3]
    )
}

/// The alias of the link holding the virtual MAC of `identity`'s group.
pub fn link_alias(identity: IpAddr, group: &str) -> String {
    let mut a = format!("{LINK_ALIAS_PREFIX} for {identity} (group {group})");
    // IFALIASZ is 256 including the terminator.
    if a.len() > 255 {
        let mut cut = 255;
        while !a.is_char_boundary(cut) {
            cut -= 1;
        }
        a.truncate(cut);
    }
    a
}

/// Two groups whose addresses give the same MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The MAC both would have.
    pub mac: Mac,
    /// The group that keeps it (the earlier key).
    pub kept: String,
    /// The group that answers with the node MAC instead.
    pub refused: String,
}

/// The virtual MACs of groups, by key, and the collisions among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Group key to its MAC.
    pub macs: BTreeMap<String, Mac>,
    /// Groups left without one.
    pub collisions: Vec<Collision>,
}

/// Assigns MACs to `groups` (key, identity): derived, and the later of two
/// colliding keys refused, so that every node, seeing the same groups,
/// decides the same.
pub fn assign<'a>(groups: impl IntoIterator<Item = (&'a str, IpAddr)>) -> Assignment {
    let mut sorted: Vec<(&str, IpAddr)> = groups.into_iter().collect();
    sorted.sort();
    let mut by_mac: BTreeMap<Mac, &str> = BTreeMap::new();
    let mut out = Assignment::default();
    for (key, identity) in sorted {
        let mac = derive(identity);
        match by_mac.get(&mac) {
            Some(kept) => out.collisions.push(Collision {
                mac,
                kept: kept.to_string(),
                refused: key.to_string(),
            }),
            None => {
                by_mac.insert(mac, key);
                out.macs.insert(key.to_string(), mac);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn derived_macs_are_fixed_locally_administered_unicast() {
        // Golden, computed apart (Python's hashlib): a pinned client's entry
        // must survive an upgrade, so the derivation never changes.
        let table = [
            ("192.0.2.100", "02:b4:98:1c:29:5f"),
            ("2001:db8::100", "02:a3:c2:54:13:c2"),
            ("10.0.0.1", "02:0b:ba:fd:f2:5b"),
        ];
        for (ip, want) in table {
            let mac = derive(ip.parse().unwrap());
            assert_eq!(mac.to_string(), want, "{ip}");
            assert_eq!(mac.0[0] & 0x03, 0x02, "locally administered, unicast");
        }
        // The family is part of the identity: ::ffff:a.b.c.d is not a.b.c.d.
        assert_ne!(
            derive("192.0.2.100".parse().unwrap()),
            derive("::ffff:192.0.2.100".parse().unwrap())
        );
    }

    #[test]
    fn a_large_pool_gets_distinct_macs_and_link_names() {
        let macs: BTreeSet<Mac> = (0..65_536u32)
            .map(|i| derive(IpAddr::V4((0x0a00_0000 | i).into())))
            .collect();
        assert_eq!(macs.len(), 65_536);
        let names: BTreeSet<String> = macs.iter().take(4096).map(|m| link_name(*m, 2)).collect();
        assert_eq!(names.len(), 4096);
        for n in &names {
            assert!(n.len() <= 15 && n.starts_with(LINK_NAME_PREFIX), "{n}");
        }
        let m = derive("192.0.2.100".parse().unwrap());
        assert_ne!(link_name(m, 2), link_name(m, 3), "one link per parent");
    }

    #[test]
    fn collisions_are_refused_to_the_later_key_whatever_the_order() {
        let a: IpAddr = "192.0.2.100".parse().unwrap();
        let b: IpAddr = "192.0.2.101".parse().unwrap();
        // The same identity twice stands for a collision (40-bit hash
        // collisions cannot be found by search in a test).
        let groups = [("b/web", a), ("a/web", a), ("c/dns", b)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let got = assign(order.iter().map(|&i| groups[i]));
            assert_eq!(got.macs.len(), 2);
            assert_eq!(got.macs["a/web"], derive(a));
            assert_eq!(got.macs["c/dns"], derive(b));
            assert_eq!(
                got.collisions,
                vec![Collision {
                    mac: derive(a),
                    kept: "a/web".into(),
                    refused: "b/web".into()
                }]
            );
        }
        assert_eq!(assign([]), Assignment::default());
    }

    #[test]
    fn aliases_fit_the_kernel_limit() {
        let a = link_alias("2001:db8::1".parse().unwrap(), &"x".repeat(400));
        assert!(a.len() <= 255 && a.starts_with(LINK_ALIAS_PREFIX));
        assert_eq!(
            link_alias("192.0.2.100".parse().unwrap(), "default/web"),
            "ferrolb virtual MAC for 192.0.2.100 (group default/web)"
        );
    }
}
