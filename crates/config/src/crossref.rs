//! Checks that relate several items or sections: unique names, references
//! to pools and peers that exist, pools that do not overlap, aggregation
//! lengths that stay inside their pools.

use crate::decode::{Ctx, Path};
use crate::parse::Draft;
use ferrolb_ipset::Family;
use std::collections::BTreeMap;

pub(crate) fn check(ctx: &mut Ctx, d: &Draft) {
    let root = Path::root();
    let pools_path = root.key("pools");

    // Pools: unique names, no address in two pools.
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in &d.pools {
        if let Some(first) = names.insert(&p.name, *i) {
            ctx.error(
                &pools_path.index(*i).key("name"),
                format!(
                    "pool {:?} is already defined at pools[{first}]; names must be unique",
                    p.name
                ),
            );
        }
    }
    for (n, (i, a)) in d.pools.iter().enumerate() {
        for (j, b) in &d.pools[n + 1..] {
            if let Some(iv) = b.addresses.first_overlap(&a.addresses) {
                ctx.error(
                    &pools_path.index(*j).key("addresses"),
                    format!(
                        "overlaps pool {:?} (pools[{i}]) at {iv}; an address may belong to one pool only",
                        a.name
                    ),
                );
            }
        }
    }
    let pool_names: Vec<&str> = d.pools.iter().map(|(_, p)| p.name.as_str()).collect();
    let check_pool_refs = |ctx: &mut Ctx, refs: &[String], path: &Path| {
        for (k, name) in refs.iter().enumerate() {
            if !pool_names.contains(&name.as_str()) {
                ctx.error(
                    &path.index(k),
                    format!(
                        "pool {name:?} is not defined; defined pools: {}",
                        list(&pool_names)
                    ),
                );
            }
        }
    };

    for (i, l2) in &d.l2 {
        check_pool_refs(ctx, &l2.pools, &root.key("l2").index(*i).key("pools"));
    }

    if let Some((_, peers, ads)) = &d.bgp {
        let bgp_path = root.key("bgp");
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut endpoints: BTreeMap<(std::net::IpAddr, u16), usize> = BTreeMap::new();
        for (i, p) in peers {
            let path = bgp_path.key("peers").index(*i);
            if let Some(first) = names.insert(&p.name, *i) {
                ctx.error(
                    &path.key("name"),
                    format!("peer {:?} is already defined at bgp.peers[{first}]", p.name),
                );
            }
            if let Some(first) = endpoints.insert((p.address, p.port), *i) {
                ctx.error(
                    &path.key("address"),
                    format!("{} port {} is already a peer at bgp.peers[{first}]; one session per router", p.address, p.port),
                );
            }
        }
        let peer_names: Vec<&str> = peers.iter().map(|(_, p)| p.name.as_str()).collect();
        for (i, ad) in ads {
            let path = bgp_path.key("advertisements").index(*i);
            check_pool_refs(ctx, &ad.pools, &path.key("pools"));
            for (k, name) in ad.peers.iter().enumerate() {
                if !peer_names.contains(&name.as_str()) {
                    ctx.error(
                        &path.key("peers").index(k),
                        format!(
                            "peer {name:?} is not defined; defined peers: {}",
                            list(&peer_names)
                        ),
                    );
                }
            }
            // An aggregate shorter than a pool's own prefixes would announce addresses outside the pool.
            for (_, pool) in d
                .pools
                .iter()
                .filter(|(_, p)| ad.pools.is_empty() || ad.pools.contains(&p.name))
            {
                for (family, len, key) in [
                    (Family::V4, ad.aggregation_length, "aggregationLength"),
                    (Family::V6, ad.aggregation_length_v6, "aggregationLengthV6"),
                ] {
                    if let Some(longest) = pool.longest_prefix(family) {
                        if len < longest {
                            ctx.error(
                                &path.key(key),
                                format!(
                                    "{len} is shorter than /{longest} in pool {:?}, so routes would cover addresses outside the pool; use at least {longest}",
                                    pool.name
                                ),
                            );
                        }
                    }
                }
            }
        }
    }

    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addrs: BTreeMap<std::net::SocketAddr, usize> = BTreeMap::new();
    for (i, m) in &d.members {
        let path = root.key("members").index(*i);
        if let Some(first) = names.insert(&m.name, *i) {
            ctx.error(
                &path.key("name"),
                format!("member {:?} is already listed at members[{first}]", m.name),
            );
        }
        if let Some(first) = addrs.insert(m.address, *i) {
            ctx.error(
                &path.key("address"),
                format!("{} is already used by members[{first}]", m.address),
            );
        }
    }

    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in &d.services {
        let path = root.key("services").index(*i);
        if let Some(first) = names.insert(&s.name, *i) {
            ctx.error(
                &path.key("name"),
                format!(
                    "service {:?} is already defined at services[{first}]",
                    s.name
                ),
            );
        }
        let pool = s.pool.as_ref().and_then(|name| {
            let found = d
                .pools
                .iter()
                .find(|(_, p)| &p.name == name)
                .map(|(_, p)| p);
            if found.is_none() {
                ctx.error(
                    &path.key("pool"),
                    format!(
                        "pool {name:?} is not defined; defined pools: {}",
                        list(&pool_names)
                    ),
                );
            }
            found
        });
        // Direct server return leaves the destination untouched: the backend
        // sees (and answers from) the VIP's own port.
        for (k, port) in s.ports.iter().enumerate() {
            if port.effective_mode(d.forwarder.mode) != crate::model::ForwardMode::KernelDsr {
                continue;
            }
            for (b, backend) in port.backends.iter().enumerate() {
                if backend.address.port() != port.port {
                    ctx.error(
                        &path.key("ports").index(k).key("backends").index(b),
                        format!(
                            "{} listens on port {}, but in kernel-dsr mode a backend receives the packets for port {} unchanged and must listen on it; use port {} or mode: kernel (NAT)",
                            backend.address,
                            backend.address.port(),
                            port.port,
                            port.port
                        ),
                    );
                }
            }
        }
        if let Some(ip) = s.ip {
            match (pool, d.pools.iter().find(|(_, p)| p.addresses.contains(ip))) {
                (Some(want), _) if !want.addresses.contains(ip) => ctx.error(
                    &path.key("ip"),
                    format!(
                        "{ip} is not in pool {:?}; pick an address from it or drop `pool`",
                        want.name
                    ),
                ),
                (None, None) if s.pool.is_none() => ctx.error(
                    &path.key("ip"),
                    format!("{ip} is outside every pool; add a pool that contains it"),
                ),
                _ => {}
            }
        }
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}
