//! The route policy of BGP mode, pure: which routes a peer should have for
//! the services this node serves (advertisements, next hops per family,
//! aggregation, communities, local-pref for iBGP), kept per service so a
//! change to one Service touches only its prefixes. The peer task
//! (`super`) sends what [`Rib`] says differs from what the peer has.

use crate::announce::ServiceVips;
use ferrolb_bgp::message::*;
use ferrolb_config::{BgpAdvertisement, Peer};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// The next hop a session gives its routes, per family; a family without
/// one is not sent on that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NextHops {
    /// For IPv4 routes.
    pub v4: Option<Ipv4Addr>,
    /// For IPv6 routes.
    pub v6: Option<std::net::Ipv6Addr>,
}

impl NextHops {
    /// A session's next hops: its local address for its own family; for the
    /// other family the configured `nextHopIPv4`/`nextHopIPv6`, else `other`
    /// (the node's address of that family on the session's interface).
    pub fn for_session(peer: &Peer, local: IpAddr, other: Option<IpAddr>) -> NextHops {
        let mut hops = NextHops {
            v4: peer.next_hop_v4,
            v6: peer.next_hop_v6,
        };
        match local {
            IpAddr::V4(a) => hops.v4 = hops.v4.or(Some(a)),
            IpAddr::V6(a) => {
                // An IPv4-mapped local address means an IPv4 session on a dual-stack socket.
                match a.to_ipv4_mapped() {
                    Some(v4) => hops.v4 = hops.v4.or(Some(v4)),
                    None => hops.v6 = hops.v6.or(Some(a)),
                }
            }
        }
        match other {
            Some(IpAddr::V4(a)) => hops.v4 = hops.v4.or(Some(a)),
            Some(IpAddr::V6(a)) => hops.v6 = hops.v6.or(Some(a)),
            None => {}
        }
        hops
    }
}

/// The advertisements this node makes of the configuration's `ads`: with
/// none configured, one of every pool to every peer; else those whose
/// `nodeSelector` matches the node's `labels` (possibly none: then this
/// node advertises nothing, which is not the same as "none configured").
pub fn for_node(
    ads: &[BgpAdvertisement],
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<BgpAdvertisement> {
    if ads.is_empty() {
        return vec![BgpAdvertisement::default()];
    }
    ads.iter()
        .filter(|a| a.node_selector.as_ref().is_none_or(|s| s.matches(labels)))
        .cloned()
        .collect()
}

/// The routes one service gives a peer (none while it is unhealthy); the
/// first advertisement of `ads` (this node's: [`for_node`]) that yields a
/// prefix decides its attributes.
pub fn routes(
    s: &ServiceVips,
    ads: &[BgpAdvertisement],
    peer: &Peer,
    hops: NextHops,
) -> Vec<(Prefix, Attrs)> {
    let mut out: Vec<(Prefix, Attrs)> = Vec::new();
    if !s.healthy {
        return out;
    }
    for ad in ads {
        if !ad.covers(&s.pool, &s.labels) || !(ad.peers.is_empty() || ad.peers.contains(&peer.name))
        {
            continue;
        }
        for vip in &s.vips {
            // A route needs a next hop of its family (IPv6 routes over an IPv4 session too).
            let next_hop = match vip {
                IpAddr::V4(_) => hops.v4.map(IpAddr::V4),
                IpAddr::V6(_) => hops.v6.map(IpAddr::V6),
            };
            if next_hop.is_none() {
                continue;
            }
            let len = if vip.is_ipv4() {
                ad.aggregation_length
            } else {
                ad.aggregation_length_v6
            };
            let Some(prefix) = Prefix::new(*vip, len) else {
                continue;
            };
            if out.iter().any(|(p, _)| *p == prefix) {
                continue;
            }
            let attrs = Attrs {
                origin: Some(Origin::Igp),
                as_path: Some(if peer.is_ebgp() {
                    vec![Segment::Sequence(vec![peer.my_asn])]
                } else {
                    vec![]
                }),
                // IPv6 next hops travel in MP_REACH_NLRI (see the peer task's `sync`).
                next_hop: if vip.is_ipv4() { hops.v4 } else { None },
                local_pref: if peer.is_ebgp() { None } else { ad.local_pref },
                communities: ad.communities.iter().map(|c| c.0).collect(),
                large_communities: ad
                    .large_communities
                    .iter()
                    .map(|c| (c.0, c.1, c.2))
                    .collect(),
                ..Attrs::default()
            };
            out.push((prefix, attrs));
        }
    }
    out
}

/// The routes a peer should have, kept per service: a prefix several
/// services share (an aggregate, a shared VIP) carries the attributes of
/// the first of them by key, so every node and every order of changes gives
/// the same answer.
///
/// Sized for 10,000 services: attributes are shared (`Arc`, one per
/// distinct set: in practice one per advertisement and family), and each
/// prefix keeps its few claimants in a sorted `Vec` (a `BTreeMap` per
/// prefix would allocate a node for eleven entries to hold one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rib {
    by_service: BTreeMap<String, Vec<Prefix>>,
    /// Per prefix: the services that want it, sorted by key, with their attributes.
    by_prefix: BTreeMap<Prefix, Vec<(String, Arc<Attrs>)>>,
    /// The distinct attribute sets in use (see [`Rib::intern`]).
    interned: Vec<Arc<Attrs>>,
}

/// Distinct attribute sets kept before the unused ones are dropped.
const INTERNED_KEPT: usize = 64;

impl Rib {
    /// The shared copy of `attrs`: routes with the same attributes hold
    /// one allocation, and the peer task compares them by pointer first.
    fn intern(&mut self, attrs: Attrs) -> Arc<Attrs> {
        if let Some(a) = self.interned.iter().find(|a| ***a == attrs) {
            return Arc::clone(a);
        }
        if self.interned.len() >= INTERNED_KEPT {
            // Only this list holds them: no route uses them any more.
            self.interned.retain(|a| Arc::strong_count(a) > 1);
        }
        let a = Arc::new(attrs);
        if self.interned.len() < INTERNED_KEPT {
            self.interned.push(Arc::clone(&a));
        }
        a
    }

    /// Sets service `key`'s routes (empty: it has none); returns the
    /// prefixes whose wanted route may have changed.
    pub fn set(&mut self, key: &str, routes: Vec<(Prefix, Attrs)>) -> BTreeSet<Prefix> {
        let mut touched = BTreeSet::new();
        for p in self.by_service.remove(key).unwrap_or_default() {
            touched.insert(p);
            if let Some(c) = self.by_prefix.get_mut(&p) {
                c.retain(|(k, _)| k != key);
                if c.is_empty() {
                    self.by_prefix.remove(&p);
                }
            }
        }
        let mut prefixes = Vec::with_capacity(routes.len());
        for (p, a) in routes {
            touched.insert(p);
            prefixes.push(p);
            let a = self.intern(a);
            let c = self.by_prefix.entry(p).or_default();
            let at = c.partition_point(|(k, _)| k.as_str() < key);
            c.insert(at, (key.to_string(), a));
        }
        if !prefixes.is_empty() {
            self.by_service.insert(key.to_string(), prefixes);
        }
        touched
    }

    /// The route wanted for `prefix`, if any.
    pub fn want(&self, prefix: &Prefix) -> Option<&Arc<Attrs>> {
        Some(&self.by_prefix.get(prefix)?.first()?.1)
    }

    /// Every wanted route, in prefix order.
    pub fn routes(&self) -> impl Iterator<Item = (&Prefix, &Arc<Attrs>)> {
        self.by_prefix
            .iter()
            .filter_map(|(p, c)| Some((p, &c.first()?.1)))
    }

    /// How many prefixes are wanted.
    pub fn len(&self) -> usize {
        self.by_prefix.len()
    }

    /// Whether no route is wanted.
    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

/// Routes this node wants a peer to have: prefix -> attributes. With no
/// advertisements configured, every healthy VIP goes to every peer.
pub fn desired<'a>(
    services: impl IntoIterator<Item = &'a ServiceVips>,
    ads: &[BgpAdvertisement],
    peer: &Peer,
    hops: NextHops,
) -> BTreeMap<Prefix, Attrs> {
    let mut rib = Rib::default();
    for s in services {
        rib.set(&s.key, routes(s, ads, peer, hops));
    }
    rib.routes().map(|(p, a)| (*p, Attrs::clone(a))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::other_family_address;

    fn setup(ads: &str) -> (Vec<ServiceVips>, ferrolb_config::Bgp) {
        let cfg = ferrolb_config::Config::from_yaml(&format!(
            "pools: [{{name: a, addresses: [203.0.113.0/28]}}, {{name: b, addresses: [198.51.100.0/28]}}]
bgp:
  peers:
    - {{name: r1, address: 192.0.2.1, asn: 65000, myAsn: 65001}}
    - {{name: r2, address: 192.0.2.2, asn: 65001, myAsn: 65001}}
{ads}"
        ))
        .expect("valid config");
        let vips = |key: &str, pool: &str, ip: &str, healthy| ServiceVips {
            key: key.into(),
            pool: pool.into(),
            vips: vec![ip.parse().unwrap()],
            healthy,
            nodes: None,
            labels: Default::default(),
        };
        let services = vec![
            vips("web", "a", "203.0.113.1", true),
            vips("api", "b", "198.51.100.1", true),
            vips("down", "a", "203.0.113.2", false),
        ];
        (services, cfg.bgp.expect("bgp section"))
    }

    fn v4_session(peer: &Peer) -> NextHops {
        NextHops::for_session(peer, "192.0.2.11".parse().unwrap(), None)
    }

    #[test]
    fn next_hops_per_family() {
        let (_, bgp) = setup("");
        let peer = &bgp.peers[0];
        let v4: IpAddr = "192.0.2.11".parse().unwrap();
        let v6: IpAddr = "2001:db8::11".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.11".parse().unwrap();
        assert_eq!(
            NextHops::for_session(peer, v4, None),
            NextHops {
                v4: Some("192.0.2.11".parse().unwrap()),
                v6: None
            }
        );
        assert_eq!(
            NextHops::for_session(peer, mapped, None).v4,
            Some("192.0.2.11".parse().unwrap())
        );
        let both = NextHops::for_session(peer, v4, Some(v6));
        assert_eq!(both.v6, Some("2001:db8::11".parse().unwrap()));
        assert_eq!(
            NextHops::for_session(peer, v6, Some(v4)).v4,
            Some("192.0.2.11".parse().unwrap())
        );
        // Configured next hops win over what the interface offers.
        let mut p = peer.clone();
        p.next_hop_v6 = Some("2001:db8::99".parse().unwrap());
        assert_eq!(
            NextHops::for_session(&p, v4, Some(v6)).v6,
            Some("2001:db8::99".parse().unwrap())
        );
        // Loopback has ::1 beside 127.0.0.1, but that is not a usable next hop.
        assert_eq!(other_family_address("127.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn ipv6_routes_travel_over_an_ipv4_session_only_with_a_next_hop() {
        let cfg = ferrolb_config::Config::from_yaml(
            "pools: [{name: a, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}]
bgp:
  peers: [{name: r1, address: 192.0.2.1, asn: 65000, myAsn: 65001}]",
        )
        .unwrap();
        let bgp = cfg.bgp.unwrap();
        let services = vec![ServiceVips {
            key: "web".into(),
            pool: "a".into(),
            vips: vec![
                "203.0.113.1".parse().unwrap(),
                "2001:db8:100::1".parse().unwrap(),
            ],
            healthy: true,
            nodes: None,
            labels: Default::default(),
        }];
        let peer = &bgp.peers[0];
        let only_v4 = desired(
            &services,
            &for_node(&bgp.advertisements, &Default::default()),
            peer,
            v4_session(peer),
        );
        assert_eq!(only_v4.len(), 1);
        let hops = NextHops::for_session(
            peer,
            "192.0.2.11".parse().unwrap(),
            Some("2001:db8::11".parse().unwrap()),
        );
        let both = desired(
            &services,
            &for_node(&bgp.advertisements, &Default::default()),
            peer,
            hops,
        );
        assert_eq!(both.len(), 2);
        let v6 = both.iter().find(|(p, _)| p.afi() == Afi::Ipv6).unwrap();
        assert_eq!(
            v6.1.next_hop, None,
            "the IPv6 next hop goes into MP_REACH_NLRI"
        );
    }

    fn prefixes(routes: &BTreeMap<Prefix, Attrs>) -> Vec<String> {
        routes.keys().map(|p| format!("{p:?}")).collect()
    }

    #[test]
    fn an_advertisements_node_selector_limits_it_to_those_nodes_and_none_left_means_nothing() {
        let (services, bgp) = setup(
            "  advertisements:\n    - {pools: [a], nodeSelector: {matchLabels: {edge: \"true\"}}}\n    - {pools: [b], aggregationLength: 28, nodeSelector: {matchExpressions: [{key: zone, operator: In, values: [x]}]}}\n",
        );
        let peer = &bgp.peers[0];
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let edge = for_node(&bgp.advertisements, &labels(&[("edge", "true")]));
        assert_eq!(edge.len(), 1);
        let got = prefixes(&desired(&services, &edge, peer, v4_session(peer)));
        assert_eq!(got, ["Prefix { addr: 203.0.113.1, len: 32 }"]);
        let zone = for_node(&bgp.advertisements, &labels(&[("zone", "x")]));
        let got = prefixes(&desired(&services, &zone, peer, v4_session(peer)));
        assert_eq!(got, ["Prefix { addr: 198.51.100.0, len: 28 }"]);
        // A node no advertisement selects advertises nothing: the
        // "no advertisements configured" default must not apply.
        let neither = for_node(&bgp.advertisements, &labels(&[("zone", "y")]));
        assert!(neither.is_empty());
        assert!(desired(&services, &neither, peer, v4_session(peer)).is_empty());
        // Without advertisements configured every node advertises every pool.
        let (_, none) = setup("");
        assert_eq!(
            for_node(&none.advertisements, &labels(&[])),
            [BgpAdvertisement::default()]
        );
    }

    #[test]
    fn an_advertisements_service_selector_picks_services_by_label_and_the_first_match_sets_attributes(
    ) {
        let (mut services, bgp) = setup(
            "  advertisements:\n    - {pools: [a], communities: [\"65000:1\"], serviceSelector: {matchLabels: {exposure: internet}}}\n    - {pools: [a], communities: [\"65000:2\"], serviceSelector: {matchExpressions: [{key: exposure, operator: NotIn, values: [internet, none]}]}}\n",
        );
        let label = |s: &mut ServiceVips, v: &str| {
            s.labels = Arc::new([("exposure".to_string(), v.to_string())].into());
        };
        let peer = &bgp.peers[0];
        let ads = for_node(&bgp.advertisements, &Default::default());
        let community_of = |services: &[ServiceVips]| -> Vec<(String, Vec<u32>)> {
            desired(services, &ads, peer, v4_session(peer))
                .iter()
                .map(|(p, a)| (format!("{p:?}"), a.communities.clone()))
                .collect()
        };
        // Unlabelled: only the NotIn entry covers it (a missing label is not in the list).
        assert_eq!(
            community_of(&services),
            [(
                "Prefix { addr: 203.0.113.1, len: 32 }".to_string(),
                vec![65000 << 16 | 2]
            )]
        );
        label(&mut services[0], "internet");
        assert_eq!(
            community_of(&services),
            [(
                "Prefix { addr: 203.0.113.1, len: 32 }".to_string(),
                vec![65000 << 16 | 1]
            )]
        );
        // Selected by neither: not advertised at all, though its pool is.
        label(&mut services[0], "none");
        assert!(community_of(&services).is_empty());
        // Pool b has no advertisement: never advertised whatever its labels.
        label(&mut services[1], "internet");
        assert!(community_of(&services).is_empty());
    }

    #[test]
    fn without_advertisements_every_healthy_vip_goes_to_every_peer() {
        let (services, bgp) = setup("");
        for peer in &bgp.peers {
            let routes = desired(
                &services,
                &for_node(&bgp.advertisements, &Default::default()),
                peer,
                v4_session(peer),
            );
            assert_eq!(routes.len(), 2, "{peer:?}: {:?}", prefixes(&routes));
            assert!(routes
                .values()
                .all(|a| a.communities.is_empty() && a.local_pref.is_none()));
        }
    }

    #[test]
    fn advertisements_select_pools_and_peers_and_local_pref_is_ibgp_only() {
        let (services, bgp) = setup(
            "  advertisements: [{pools: [a], peers: [r1, r2], localPref: 200}, {pools: [b], peers: [r2]}]",
        );
        let r1 = desired(
            &services,
            &bgp.advertisements,
            &bgp.peers[0],
            v4_session(&bgp.peers[0]),
        );
        let r2 = desired(
            &services,
            &bgp.advertisements,
            &bgp.peers[1],
            v4_session(&bgp.peers[1]),
        );
        assert_eq!(r1.len(), 1, "{:?}", prefixes(&r1));
        assert_eq!(
            r1.values().next().unwrap().local_pref,
            None,
            "eBGP: no LOCAL_PREF"
        );
        assert_eq!(r2.len(), 2, "{:?}", prefixes(&r2));
        let web = r2
            .iter()
            .find(|(p, _)| format!("{p:?}").contains("203.0.113.1"))
            .expect("web to r2");
        assert_eq!(web.1.local_pref, Some(200), "iBGP carries LOCAL_PREF");
        assert_eq!(web.1.as_path, Some(vec![]), "iBGP: empty AS path");
    }

    /// Changes applied one service at a time, in any order, leave the same
    /// routes as computing them from every service at once (aggregates and
    /// shared VIPs included).
    #[test]
    fn a_rib_kept_per_service_equals_the_table_computed_from_scratch() {
        let (_, bgp) = setup(
            "  advertisements:\n    - {pools: [a], aggregationLength: 30, communities: [\"65000:1\"]}\n    - {pools: [b]}\n",
        );
        let peer = &bgp.peers[0];
        let hops = v4_session(peer);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut rib = Rib::default();
        let mut live: BTreeMap<String, ServiceVips> = BTreeMap::new();
        for _ in 0..5_000 {
            let key = format!("ns/s{}", next(12));
            if next(4) == 0 {
                live.remove(&key);
                rib.set(&key, Vec::new());
            } else {
                let pool = if next(2) == 0 { "a" } else { "b" };
                let net = if pool == "a" {
                    "203.0.113"
                } else {
                    "198.51.100"
                };
                let s = ServiceVips {
                    key: key.clone(),
                    pool: pool.into(),
                    vips: vec![format!("{net}.{}", next(8)).parse().unwrap()],
                    healthy: next(5) != 0,
                    nodes: None,
                    labels: Default::default(),
                };
                rib.set(
                    &key,
                    routes(
                        &s,
                        &for_node(&bgp.advertisements, &Default::default()),
                        peer,
                        hops,
                    ),
                );
                live.insert(key, s);
            }
            // The reference: every service in key order, the first route per prefix kept.
            let mut want: BTreeMap<Prefix, Attrs> = BTreeMap::new();
            for s in live.values() {
                for (p, a) in routes(
                    s,
                    &for_node(&bgp.advertisements, &Default::default()),
                    peer,
                    hops,
                ) {
                    want.entry(p).or_insert(a);
                }
            }
            let have: BTreeMap<Prefix, Attrs> =
                rib.routes().map(|(p, a)| (*p, Attrs::clone(a))).collect();
            assert_eq!(have, want);
        }
    }

    #[test]
    fn routes_with_the_same_attributes_share_one_copy_and_unused_ones_go() {
        let (_, bgp) = setup("");
        let peer = &bgp.peers[0];
        let hops = v4_session(peer);
        let mut rib = Rib::default();
        for i in 0..1_000u32 {
            let s = ServiceVips {
                key: format!("ns/s{i}"),
                pool: "a".into(),
                vips: vec![IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + (i % 16)))],
                healthy: true,
                nodes: None,
                labels: Default::default(),
            };
            rib.set(
                &s.key,
                routes(
                    &s,
                    &for_node(&bgp.advertisements, &Default::default()),
                    peer,
                    hops,
                ),
            );
        }
        let all: Vec<&Arc<Attrs>> = rib.routes().map(|(_, a)| a).collect();
        assert_eq!(all.len(), 16);
        assert!(
            all.iter().all(|a| Arc::ptr_eq(a, all[0])),
            "one shared copy"
        );
        assert_eq!(rib.interned.len(), 1);
        // Attributes that keep changing (a MED per change) cannot grow the
        // list past its bound: sets no route uses any more are dropped.
        let mut a = Attrs::clone(all[0]);
        for med in 0..500 {
            a.med = Some(med);
            let p = *rib.routes().next().map(|(p, _)| p).expect("a route");
            rib.set("ns/s0", vec![(p, a.clone())]);
        }
        assert!(
            rib.interned.len() <= INTERNED_KEPT,
            "{}",
            rib.interned.len()
        );
        assert_eq!(
            rib.want(&rib.routes().next().map(|(p, _)| *p).expect("a route"))
                .and_then(|a| a.med),
            Some(499),
            "ns/s0 is its prefix's first claimant by key"
        );
    }
}
