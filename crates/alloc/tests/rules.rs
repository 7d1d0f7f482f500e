//! Table tests of the allocation rules, one behaviour per test.

use ferrolb_alloc::*;
use ferrolb_config::{Config, Pool, Protocol};
use ferrolb_ipset::Family;
use std::net::IpAddr;

fn pools(yaml: &str) -> Vec<Pool> {
    Config::from_yaml(yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .pools
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn req(ns: &str, name: &str) -> Request {
    Request::new(ServiceKey::new(ns, name))
}

fn tcp(port: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port,
    }
}

fn udp(port: u16) -> Port {
    Port {
        protocol: Protocol::Udp,
        port,
    }
}

#[test]
fn lowest_free_address_first_and_idempotent() {
    let mut a = Allocator::new(&pools(
        "pools: [{name: p, addresses: [192.0.2.10-192.0.2.12]}]",
    ));
    let x = a.allocate(&req("ns", "a")).unwrap();
    assert_eq!(
        x,
        Assignment {
            pool: "p".into(),
            ips: vec![ip("192.0.2.10")]
        }
    );
    assert_eq!(
        a.allocate(&req("ns", "a")).unwrap(),
        x,
        "allocating again keeps the address"
    );
    assert_eq!(a.allocate(&req("ns", "b")).unwrap().ips, [ip("192.0.2.11")]);
    assert_eq!(a.allocate(&req("ns", "c")).unwrap().ips, [ip("192.0.2.12")]);
    let err = a.allocate(&req("ns", "d")).unwrap_err();
    assert_eq!(
        err,
        AllocError::Exhausted {
            family: Family::V4,
            pools: "p".into()
        }
    );
    assert!(err
        .to_string()
        .contains("no free IPv4 address in pool(s) p"));
    a.release(&ServiceKey::new("ns", "b"));
    assert_eq!(a.allocate(&req("ns", "d")).unwrap().ips, [ip("192.0.2.11")]);
}

#[test]
fn priority_then_name_orders_pools() {
    let mut a = Allocator::new(&pools(
        "pools:
           - {name: zz-none, addresses: [10.0.3.0/30]}
           - {name: b-low, addresses: [10.0.2.0/32], priority: 20}
           - {name: a-high, addresses: [10.0.1.0/32], priority: 5}
           - {name: a-none, addresses: [10.0.4.0/32]}",
    ));
    let order: Vec<String> = (0..4)
        .map(|i| {
            a.allocate(&req("ns", &format!("s{i}")))
                .unwrap()
                .pool
                .to_string()
        })
        .collect();
    assert_eq!(order, ["a-high", "b-low", "a-none", "zz-none"]);
}

/// As MetalLB tries the pools that select a Service before the others: at
/// one priority (or none), a pool restricted to the Service's namespace or
/// labels comes before an unrestricted one, whatever the names. MetalLB
/// breaks the remaining ties at random; ferrolb by name.
#[test]
fn restricted_pools_come_before_unrestricted_ones_of_the_same_priority() {
    let mut a = Allocator::new(&pools(
        "pools:
           - {name: a-open, addresses: [10.0.1.0/32], priority: 10}
           - {name: z-team, addresses: [10.0.2.0/32], priority: 10, namespaces: [team]}
           - {name: b-open-none, addresses: [10.0.3.0/32]}
           - {name: y-labels-none, addresses: [10.0.4.0/32], serviceSelector: {matchLabels: {tier: gold}}}",
    ));
    let mut gold = req("team", "s0");
    gold.labels.insert("tier".into(), "gold".into());
    let order: Vec<String> = [
        gold.clone(),
        {
            let mut r = gold.clone();
            r.key = ServiceKey::new("team", "s1");
            r
        },
        {
            let mut r = gold.clone();
            r.key = ServiceKey::new("team", "s2");
            r
        },
        {
            let mut r = gold;
            r.key = ServiceKey::new("team", "s3");
            r
        },
    ]
    .iter()
    .map(|r| a.allocate(r).unwrap().pool.to_string())
    .collect();
    assert_eq!(order, ["z-team", "a-open", "y-labels-none", "b-open-none"]);
    // A Service the restricted pools do not select still gets the open ones in order.
    let mut b = Allocator::new(&pools(
        "pools:
           - {name: a-open, addresses: [10.0.1.0/32], priority: 10}
           - {name: z-team, addresses: [10.0.2.0/32], priority: 10, namespaces: [team]}",
    ));
    assert_eq!(&*b.allocate(&req("other", "s")).unwrap().pool, "a-open");
}

#[test]
fn auto_assign_off_only_by_request() {
    let mut a = Allocator::new(&pools(
        "pools: [{name: manual, addresses: [10.0.0.0/30], autoAssign: false}]",
    ));
    let err = a.allocate(&req("ns", "a")).unwrap_err();
    assert!(
        matches!(&err, AllocError::NoPool { reason, .. } if reason.contains("autoAssign off")),
        "{err}"
    );
    let mut r = req("ns", "a");
    r.requested_pool = Some("manual".into());
    assert_eq!(a.allocate(&r).unwrap().ips, [ip("10.0.0.0")]);
    let mut r = req("ns", "b");
    r.requested_ips = vec![ip("10.0.0.3")];
    assert_eq!(
        a.allocate(&r).unwrap().ips,
        [ip("10.0.0.3")],
        "a requested IP may come from a manual pool"
    );
}

#[test]
fn namespaces_and_selectors() {
    let mut a = Allocator::new(&pools(
        "pools:
           - {name: team, addresses: [10.0.1.0/30], namespaces: [team-a], priority: 1}
           - {name: front, addresses: [10.0.2.0/30], serviceSelector: {matchLabels: {tier: front}}, priority: 2}",
    ));
    assert_eq!(a.allocate(&req("team-a", "x")).unwrap().pool, "team".into());
    let mut r = req("other", "y");
    r.labels.insert("tier".into(), "front".into());
    assert_eq!(a.allocate(&r).unwrap().pool, "front".into());
    let err = a.allocate(&req("other", "z")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("namespace \"other\" is not among its namespaces (team-a)"),
        "{text}"
    );
    assert!(
        text.contains("do not match its serviceSelector (tier=front)"),
        "{text}"
    );
    let mut r = req("other", "z");
    r.requested_pool = Some("team".into());
    assert!(matches!(
        a.allocate(&r),
        Err(AllocError::PoolNotAllowed { .. })
    ));
    r.requested_pool = Some("nope".into());
    assert_eq!(
        a.allocate(&r),
        Err(AllocError::UnknownPool {
            pool: "nope".into()
        })
    );
}

#[test]
fn namespace_selectors_add_to_named_namespaces() {
    let mut a = Allocator::new(&pools(
        "pools:
           - {name: pay, addresses: [10.0.1.0/30], namespaces: [legacy], namespaceSelector: {matchLabels: {team: payments}}, priority: 1}
           - {name: rest, addresses: [10.0.2.0/30], priority: 2}",
    ));
    // Selected by its namespace's labels.
    let mut r = req("checkout", "a");
    r.namespace_labels.insert("team".into(), "payments".into());
    assert_eq!(a.allocate(&r).unwrap().pool, "pay".into());
    // Named, whatever its labels.
    assert_eq!(a.allocate(&req("legacy", "b")).unwrap().pool, "pay".into());
    // Neither: the next pool, and asking for the pool says why not.
    let mut r = req("web", "c");
    r.namespace_labels.insert("team".into(), "shop".into());
    assert_eq!(a.allocate(&r).unwrap().pool, "rest".into());
    let mut r = req("web", "d");
    r.requested_pool = Some("pay".into());
    let text = a.allocate(&r).unwrap_err().to_string();
    assert!(
        text.contains("namespace \"web\" is not among its namespaces (legacy) nor matches its namespaceSelector (team=payments)"),
        "{text}"
    );
    // A selector alone restricts the pool (it is no longer open to all).
    let mut b = Allocator::new(&pools(
        "pools: [{name: only, addresses: [10.0.3.0/30], namespaceSelector: {matchLabels: {team: payments}}}]",
    ));
    assert!(matches!(
        b.allocate(&req("web", "e")),
        Err(AllocError::NoPool { .. })
    ));
}

#[test]
fn requested_ip_rules() {
    let mut a = Allocator::new(&pools(
        "pools: [{name: p, addresses: [10.0.0.0/24], avoidBuggyIPs: true}, {name: q, addresses: ['2001:db8::/64']}]",
    ));
    let mut r = req("ns", "a");
    r.requested_ips = vec![ip("10.0.0.7")];
    assert_eq!(a.allocate(&r).unwrap().ips, [ip("10.0.0.7")]);
    let mut r2 = req("ns", "b");
    r2.requested_ips = vec![ip("10.0.0.7")];
    assert_eq!(
        a.allocate(&r2),
        Err(AllocError::InUse {
            ip: ip("10.0.0.7"),
            holder: ServiceKey::new("ns", "a")
        })
    );
    r2.requested_ips = vec![ip("10.0.0.255")];
    assert!(matches!(a.allocate(&r2), Err(AllocError::BuggyIp { .. })));
    r2.requested_ips = vec![ip("192.0.2.1")];
    assert_eq!(
        a.allocate(&r2),
        Err(AllocError::OutsidePools {
            ip: ip("192.0.2.1")
        })
    );
    r2.requested_ips = vec![ip("2001:db8::5")];
    assert!(
        matches!(a.allocate(&r2), Err(AllocError::BadRequest(m)) if m.contains("allow only IPv4"))
    );
    r2.requested_ips = vec![ip("10.0.0.8"), ip("10.0.0.9")];
    assert!(
        matches!(a.allocate(&r2), Err(AllocError::BadRequest(m)) if m.contains("more than one IPv4"))
    );
    r2.policy = FamilyPolicy::RequireDualStack;
    r2.requested_ips = vec![ip("10.0.0.8"), ip("2001:db8::5")];
    assert!(
        matches!(a.allocate(&r2), Err(AllocError::BadRequest(m)) if m.contains("different pools"))
    );
    r2.requested_ips = vec![ip("10.0.0.8")];
    assert!(
        matches!(a.allocate(&r2), Err(AllocError::BadRequest(m)) if m.contains("RequireDualStack"))
    );
    r2.policy = FamilyPolicy::SingleStack;
    r2.requested_ips = vec![ip("10.0.0.8")];
    r2.requested_pool = Some("q".into());
    assert!(
        matches!(a.allocate(&r2), Err(AllocError::BadRequest(m)) if m.contains("not in the requested pool"))
    );
}

#[test]
fn buggy_addresses_are_skipped_and_not_counted() {
    let mut a = Allocator::new(&pools(
        "pools: [{name: p, addresses: [10.0.0.254-10.0.1.2], avoidBuggyIPs: true}]",
    ));
    assert_eq!(a.stats()[0].v4.total, 3, ".254, .1, .2 of 5 addresses");
    let got: Vec<IpAddr> = (0..3)
        .map(|i| a.allocate(&req("ns", &i.to_string())).unwrap().ips[0])
        .collect();
    assert_eq!(got, [ip("10.0.0.254"), ip("10.0.1.1"), ip("10.0.1.2")]);
    assert!(matches!(
        a.allocate(&req("ns", "x")),
        Err(AllocError::Exhausted { .. })
    ));
    assert_eq!(a.stats()[0].v4.free, 0);
}

#[test]
fn sharing_by_key_and_ports() {
    let mut a = Allocator::new(&pools("pools: [{name: p, addresses: [10.0.0.0/30]}]"));
    let mut dns_tcp = req("ns", "dns-tcp");
    dns_tcp.sharing_key = Some("dns".into());
    dns_tcp.ports = vec![tcp(53)];
    let first = a.allocate(&dns_tcp).unwrap();
    let mut dns_udp = req("ns", "dns-udp");
    dns_udp.sharing_key = Some("dns".into());
    dns_udp.ports = vec![udp(53)];
    assert_eq!(
        a.allocate(&dns_udp).unwrap(),
        first,
        "TCP 53 and UDP 53 do not collide: same IP"
    );
    assert_eq!(a.holders(first.ips[0]).len(), 2);
    assert_eq!(a.stats()[0].v4.used, 1, "a shared address counts once");

    let mut clash = req("ns", "clash");
    clash.sharing_key = Some("dns".into());
    clash.ports = vec![tcp(53)];
    clash.requested_ips = first.ips.clone();
    assert_eq!(
        a.allocate(&clash),
        Err(AllocError::PortCollision {
            ip: first.ips[0],
            holder: ServiceKey::new("ns", "dns-tcp"),
            port: tcp(53)
        })
    );
    clash.requested_ips.clear();
    assert_ne!(
        a.allocate(&clash).unwrap(),
        first,
        "auto allocation with a colliding port takes a new IP"
    );

    let mut other_key = req("ns", "k2");
    other_key.sharing_key = Some("other".into());
    other_key.ports = vec![tcp(80)];
    other_key.requested_ips = first.ips.clone();
    assert!(matches!(
        a.allocate(&other_key),
        Err(AllocError::InUse { .. })
    ));

    // externalTrafficPolicy Local: selectors must match.
    let mut local = req("ns", "local");
    local.sharing_key = Some("dns".into());
    local.ports = vec![tcp(80)];
    local.backend_key = Some("app=x".into());
    local.requested_ips = first.ips.clone();
    assert!(matches!(
        a.allocate(&local),
        Err(AllocError::BackendMismatch { .. })
    ));

    // The address stays held until its last holder goes.
    a.release(&ServiceKey::new("ns", "dns-tcp"));
    assert_eq!(a.holders(first.ips[0]), [&ServiceKey::new("ns", "dns-udp")]);
    a.release(&ServiceKey::new("ns", "dns-udp"));
    assert!(a.holders(first.ips[0]).is_empty());
    assert_eq!(a.stats()[0].v4.used, 1, "only `clash` holds an address now");
}

#[test]
fn dual_stack_policies() {
    let both = pools("pools: [{name: v4only, addresses: [10.0.0.0/31], priority: 1}, {name: dual, addresses: [10.0.1.0/31, 'fd00::/126'], priority: 2}]");
    let mut a = Allocator::new(&both);
    let mut r = req("ns", "prefer");
    r.policy = FamilyPolicy::PreferDualStack;
    r.families = vec![Family::V6, Family::V4];
    let got = a.allocate(&r).unwrap();
    assert_eq!(
        got.pool,
        "dual".into(),
        "the pool with both families wins over a higher-priority single-family pool"
    );
    assert_eq!(
        got.ips,
        [ip("fd00::"), ip("10.0.1.0")],
        "primary family first"
    );

    let mut r = req("ns", "require");
    r.policy = FamilyPolicy::RequireDualStack;
    assert_eq!(a.allocate(&r).unwrap().ips, [ip("10.0.1.1"), ip("fd00::1")]);

    // The dual pool's IPv4 is now exhausted: Prefer falls back to one family, Require fails.
    let mut r = req("ns", "prefer2");
    r.policy = FamilyPolicy::PreferDualStack;
    let got = a.allocate(&r).unwrap();
    assert_eq!(
        (&*got.pool, got.ips.as_slice()),
        ("v4only", &[ip("10.0.0.0")][..])
    );
    let mut r = req("ns", "require2");
    r.policy = FamilyPolicy::RequireDualStack;
    assert!(matches!(a.allocate(&r), Err(AllocError::Exhausted { .. })));

    let v4 = pools("pools: [{name: p, addresses: [10.0.0.0/30]}]");
    let mut a = Allocator::new(&v4);
    let mut r = req("ns", "v6");
    r.families = vec![Family::V6];
    assert_eq!(
        a.allocate(&r),
        Err(AllocError::FamilyUnavailable {
            service: r.key.clone(),
            family: Family::V6
        })
    );
}

#[test]
fn prefer_dual_stack_gains_second_family_without_moving() {
    let mut a = Allocator::new(&pools("pools: [{name: p, addresses: [10.0.0.0/30]}, {name: q, addresses: [10.0.1.0/30, 'fd00::/126']}]"));
    let mut r = req("ns", "a");
    let first = a.allocate(&r).unwrap();
    assert_eq!(first.ips, [ip("10.0.0.0")]);
    r.policy = FamilyPolicy::PreferDualStack;
    // Pool p has no IPv6: the address stays, and the service stays single stack rather than move.
    assert_eq!(a.allocate(&r).unwrap(), first);
    let mut s = req("ns", "b");
    s.requested_pool = Some("q".into());
    assert_eq!(a.allocate(&s).unwrap().ips, [ip("10.0.1.0")]);
    s.policy = FamilyPolicy::PreferDualStack;
    assert_eq!(a.allocate(&s).unwrap().ips, [ip("10.0.1.0"), ip("fd00::")]);
}

#[test]
fn failed_change_keeps_previous_assignment() {
    let mut a = Allocator::new(&pools("pools: [{name: p, addresses: [10.0.0.0/30]}]"));
    let mut r = req("ns", "a");
    let before = a.allocate(&r).unwrap();
    let mut b = req("ns", "b");
    b.requested_ips = vec![ip("10.0.0.2")];
    a.allocate(&b).unwrap();
    r.requested_ips = vec![ip("10.0.0.2")];
    assert!(a.allocate(&r).is_err());
    assert_eq!(
        a.assignment(&r.key),
        Some(&before),
        "a failed change never loses the working IP"
    );
    r.requested_ips = vec![ip("10.0.0.3")];
    assert_eq!(a.allocate(&r).unwrap().ips, [ip("10.0.0.3")]);
    assert!(
        a.holders(ip("10.0.0.0")).is_empty(),
        "the old address is freed after a successful move"
    );
}

#[test]
fn ipv6_counters_are_exact() {
    let a = Allocator::new(&pools(
        "pools: [{name: big, addresses: ['2001:db8::/32', '2001:db9::/64', 10.0.0.0/8]}]",
    ));
    let s = &a.stats()[0];
    assert_eq!(s.v6.total, (1u128 << 96) + (1u128 << 64));
    assert_eq!(s.v4.total, 1 << 24);
    let mut a = Allocator::new(&pools("pools: [{name: huge, addresses: ['::/1']}]"));
    assert_eq!(a.stats()[0].v6.total, 1u128 << 127);
    let mut r = req("ns", "x");
    r.families = vec![Family::V6];
    a.allocate(&r).unwrap();
    assert_eq!(a.stats()[0].v6.free, (1u128 << 127) - 1);
}

#[test]
fn restore_keeps_oldest_of_duplicates() {
    let p = pools("pools: [{name: p, addresses: [10.0.0.0/29]}]");
    let mut a = Allocator::new(&p);
    let mut old = req("ns", "zz-old");
    old.created = 100;
    let mut new = req("ns", "aa-new");
    new.created = 200;
    let mut other = req("ns", "other");
    other.created = 150;
    let report = a.restore(vec![
        (new.clone(), vec![ip("10.0.0.3")]),
        (old.clone(), vec![ip("10.0.0.3")]),
        (other.clone(), vec![ip("10.0.0.5")]),
        (req("ns", "pending"), vec![]),
    ]);
    assert_eq!(report.kept, [old.key.clone(), other.key.clone()]);
    assert_eq!(
        report.rejected,
        [(
            new.key.clone(),
            AllocError::InUse {
                ip: ip("10.0.0.3"),
                holder: old.key.clone()
            }
        )]
    );
    assert_eq!(a.assignment(&new.key), None);
    // The loser gets a fresh address that moves nobody.
    assert_eq!(a.allocate(&new).unwrap().ips, [ip("10.0.0.0")]);
}

#[test]
fn reconfigure_keeps_valid_and_evicts_removed_pool() {
    let mut a = Allocator::new(&pools(
        "pools: [{name: p, addresses: [10.0.0.0/30]}, {name: q, addresses: [10.0.1.0/30]}]",
    ));
    let mut rp = req("ns", "on-p");
    rp.requested_pool = Some("p".into());
    rp.created = 1;
    let mut rq = req("ns", "on-q");
    rq.requested_pool = Some("q".into());
    rq.created = 2;
    let kept = a.allocate(&rq).unwrap();
    a.allocate(&rp).unwrap();
    let evicted = a.reconfigure(&pools(
        "pools: [{name: q, addresses: [10.0.1.0/29]}, {name: r, addresses: [10.0.2.0/30]}]",
    ));
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].0, rp.key);
    assert!(matches!(evicted[0].1, AllocError::OutsidePools { .. }));
    assert_eq!(
        a.assignment(&rq.key),
        Some(&kept),
        "a still-valid address never moves on reconfigure"
    );
    assert_eq!(
        a.stats().iter().find(|s| s.name == "q").unwrap().v4,
        FamilyStats {
            total: 8,
            used: 1,
            free: 7
        }
    );
}
