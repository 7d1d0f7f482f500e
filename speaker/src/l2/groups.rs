//! Services that share an address move together: layer 2 has one owner per
//! address, so Services sharing a VIP (a sharing key, the same `ip:` with
//! distinct ports) are elected as one group. Pure.
//!
//! A group's key is its first Service by name: the election's rendezvous
//! key and the virtual MAC's identity. A Service alone is a group of one
//! whose key is its own, so elections are what they were per Service.

use crate::announce::ServiceVips;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Services one owner announces together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The first member's key.
    pub key: String,
    /// The members, by key.
    pub services: Vec<Arc<ServiceVips>>,
}

impl Group {
    /// The group's identity for its virtual MAC: its lowest address, the
    /// same on every node and unique on the segment.
    pub fn identity(&self) -> Option<IpAddr> {
        self.services
            .iter()
            .flat_map(|s| s.vips.iter().copied())
            .min()
    }

    /// The nodes that may announce the group: those every member allows,
    /// or, when the members allow disjoint sets (two `Local` Services with
    /// endpoints on different nodes sharing one address, which layer 2
    /// cannot serve both ways), those any member allows.
    pub fn eligible<'a>(&self, candidates: &[&'a str]) -> Vec<&'a str> {
        let all: Vec<&'a str> = candidates
            .iter()
            .copied()
            .filter(|n| self.services.iter().all(|s| s.eligible(n)))
            .collect();
        if !all.is_empty() {
            return all;
        }
        candidates
            .iter()
            .copied()
            .filter(|n| self.services.iter().any(|s| s.eligible(n)))
            .collect()
    }
}

fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// The groups of `services` (given in key order, as a `Table` iterates):
/// connected by shared addresses, in the order of their keys.
pub fn groups<'a>(services: impl IntoIterator<Item = &'a Arc<ServiceVips>>) -> Vec<Group> {
    let services: Vec<&Arc<ServiceVips>> = services.into_iter().collect();
    let mut parent: Vec<usize> = (0..services.len()).collect();
    let mut first: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        for vip in &s.vips {
            match first.get(vip) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    // The smaller index (the earlier key) stays the root.
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first.insert(*vip, i);
                }
            }
        }
    }
    let mut by_root: BTreeMap<usize, Vec<Arc<ServiceVips>>> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(Arc::clone(s));
    }
    let mut out: Vec<Group> = by_root
        .into_values()
        .map(|mut members| {
            members.sort_by(|a, b| a.key.cmp(&b.key));
            Group {
                key: members[0].key.clone(),
                services: members,
            }
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn svc(key: &str, vips: &[&str], nodes: Option<&[&str]>) -> Arc<ServiceVips> {
        Arc::new(ServiceVips {
            key: key.into(),
            pool: "vips".into(),
            vips: vips.iter().map(|v| v.parse().expect("ip")).collect(),
            healthy: true,
            nodes: nodes.map(|n| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()),
            labels: Default::default(),
        })
    }

    fn keys(g: &[Group]) -> Vec<(String, Vec<String>)> {
        g.iter()
            .map(|g| {
                (
                    g.key.clone(),
                    g.services.iter().map(|s| s.key.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn services_sharing_an_address_form_one_group_keyed_by_the_first() {
        // (services in key order, expected groups)
        type Row = (
            Vec<Arc<ServiceVips>>,
            Vec<(&'static str, Vec<&'static str>)>,
        );
        let table: Vec<Row> = vec![
            // Alone: each its own group, its own key (elections as before).
            (
                vec![
                    svc("a/web", &["192.0.2.1"], None),
                    svc("b/dns", &["192.0.2.2"], None),
                ],
                vec![("a/web", vec!["a/web"]), ("b/dns", vec!["b/dns"])],
            ),
            // A sharing key: two Services on one address.
            (
                vec![
                    svc("a/http", &["192.0.2.1"], None),
                    svc("a/https", &["192.0.2.1"], None),
                    svc("b/dns", &["192.0.2.2"], None),
                ],
                vec![
                    ("a/http", vec!["a/http", "a/https"]),
                    ("b/dns", vec!["b/dns"]),
                ],
            ),
            // A chain: dual-stack x shares v4 with y, y shares v6 with z.
            (
                vec![
                    svc("x", &["192.0.2.1", "2001:db8::1"], None),
                    svc("y", &["192.0.2.9", "2001:db8::2"], None),
                    svc("z", &["2001:db8::2", "192.0.2.1"], None),
                ],
                vec![("x", vec!["x", "y", "z"])],
            ),
            // Joined only through a later member.
            (
                vec![
                    svc("a", &["192.0.2.1"], None),
                    svc("b", &["192.0.2.2"], None),
                    svc("c", &["192.0.2.1", "192.0.2.2"], None),
                ],
                vec![("a", vec!["a", "b", "c"])],
            ),
            (vec![], vec![]),
        ];
        for (services, want) in table {
            let want: Vec<(String, Vec<String>)> = want
                .into_iter()
                .map(|(k, m)| (k.to_string(), m.into_iter().map(str::to_string).collect()))
                .collect();
            assert_eq!(keys(&groups(&services)), want);
            // Whatever order the table is given in.
            let reversed: Vec<Arc<ServiceVips>> = services.iter().rev().cloned().collect();
            assert_eq!(keys(&groups(&reversed)), want);
        }
    }

    #[test]
    fn a_group_is_announced_where_every_member_may_be_else_where_any_may() {
        let candidates = ["n1", "n2", "n3"];
        let g = |services| Group {
            key: "a".into(),
            services,
        };
        let both = g(vec![
            svc("a", &["192.0.2.1"], Some(&["n1", "n2"])),
            svc("b", &["192.0.2.1"], None),
        ]);
        assert_eq!(both.eligible(&candidates), ["n1", "n2"]);
        let disjoint = g(vec![
            svc("a", &["192.0.2.1"], Some(&["n1"])),
            svc("b", &["192.0.2.1"], Some(&["n3"])),
        ]);
        assert_eq!(disjoint.eligible(&candidates), ["n1", "n3"]);
        let none = g(vec![svc("a", &["192.0.2.1"], Some(&[]))]);
        assert!(none.eligible(&candidates).is_empty());
    }

    #[test]
    fn a_group_is_identified_by_its_lowest_address() {
        let gs = groups(&[
            svc("a", &["2001:db8::1", "192.0.2.9"], None),
            svc("b", &["192.0.2.9", "192.0.2.3"], None),
        ]);
        assert_eq!(gs.len(), 1);
        assert_eq!(gs[0].identity(), Some("192.0.2.3".parse().unwrap()));
        let empty = Group {
            key: "x".into(),
            services: vec![],
        };
        assert_eq!(empty.identity(), None);
    }
}
