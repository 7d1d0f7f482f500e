//! Property tests: random operation sequences on small pools, checked after
//! every step against a brute-force model of what must hold.

use ferrolb_alloc::*;
use ferrolb_config::{Config, Pool, Protocol};
use ferrolb_ipset::{to_u128, Family};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

const POOLS: &str = "pools:
  - {name: a, addresses: [10.0.0.254-10.0.1.3, 10.0.2.0/30, 'fd00::/126'], avoidBuggyIPs: true, priority: 1}
  - {name: b, addresses: [10.0.3.0/30, 'fd00:1::-fd00:1::2'], namespaces: [ns0, ns1]}
  - {name: c, addresses: [10.0.4.0/31], autoAssign: false}
";

fn pools() -> Vec<Pool> {
    Config::from_yaml(POOLS).unwrap().pools
}

#[derive(Debug, Clone)]
enum Op {
    Allocate(Box<Request>),
    Release(usize),
}

fn request() -> impl Strategy<Value = Request> {
    (
        0usize..8,
        0i64..5,
        0usize..3,
        prop::option::of(0usize..2),
        prop::collection::vec((any::<bool>(), 1u16..4), 0..3),
        prop::option::of(0usize..2),
        0usize..4,
        prop::option::of(prop::sample::select(vec!["a", "b", "c", "zz"])),
        prop::option::of(0u8..12),
    )
        .prop_map(
            |(svc, created, ns, key, ports, backend, fam, pool, req_ip)| {
                let mut r = Request::new(ServiceKey::new(format!("ns{ns}"), format!("s{svc}")));
                r.created = created;
                r.sharing_key = key.map(|k| format!("k{k}"));
                r.ports = ports
                    .into_iter()
                    .map(|(t, port)| Port {
                        protocol: if t { Protocol::Tcp } else { Protocol::Udp },
                        port,
                    })
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                r.backend_key = backend.map(|b| format!("sel{b}"));
                (r.families, r.policy) = match fam {
                    0 => (vec![], FamilyPolicy::SingleStack),
                    1 => (vec![Family::V6], FamilyPolicy::SingleStack),
                    2 => (vec![Family::V4, Family::V6], FamilyPolicy::PreferDualStack),
                    _ => (vec![Family::V6, Family::V4], FamilyPolicy::RequireDualStack),
                };
                r.requested_pool = pool.map(str::to_string);
                if let Some(n) = req_ip {
                    // Requested addresses from inside, at the edge of and outside the pools.
                    let choices = [
                        "10.0.0.254",
                        "10.0.1.0",
                        "10.0.1.1",
                        "10.0.2.3",
                        "10.0.3.1",
                        "10.0.4.1",
                        "fd00::2",
                        "fd00:1::1",
                        "192.0.2.1",
                        "10.0.2.1",
                        "fd00::",
                        "10.0.0.255",
                    ];
                    r.requested_ips = vec![choices[n as usize].parse().unwrap()];
                }
                r
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![4 => request().prop_map(|r| Op::Allocate(Box::new(r))), 1 => (0usize..8).prop_map(Op::Release)],
        1..60,
    )
}

/// Everything that must hold at any moment, recomputed by brute force.
fn check(
    a: &Allocator,
    pools: &[Pool],
    requests: &BTreeMap<ServiceKey, Request>,
) -> Result<(), TestCaseError> {
    let mut by_ip: BTreeMap<IpAddr, Vec<&ServiceKey>> = BTreeMap::new();
    for (key, asg) in a.assignments() {
        let pool = pools.iter().find(|p| *p.name == *asg.pool).unwrap();
        let fams: BTreeSet<Family> = asg.ips.iter().map(|ip| Family::of(*ip)).collect();
        prop_assert_eq!(fams.len(), asg.ips.len(), "one address per family");
        for ip in &asg.ips {
            prop_assert!(pool.addresses.contains(*ip), "{} outside its pool", ip);
            prop_assert!(
                !(pool.avoid_buggy_ips && ferrolb_ipset::is_buggy(*ip)),
                "buggy {} handed out",
                ip
            );
            by_ip.entry(*ip).or_default().push(key);
        }
    }
    // Never the same IP to two services that may not share it.
    for (ip, holders) in &by_ip {
        for (i, x) in holders.iter().enumerate() {
            for y in &holders[i + 1..] {
                let (rx, ry) = (&requests[*x], &requests[*y]);
                prop_assert!(
                    rx.sharing_key.is_some() && rx.sharing_key == ry.sharing_key,
                    "{} shared by {} and {} without a common key",
                    ip,
                    x,
                    y
                );
                prop_assert_eq!(&rx.backend_key, &ry.backend_key);
                prop_assert!(
                    rx.ports.iter().all(|p| !ry.ports.contains(p)),
                    "{} port collision between {} and {}",
                    ip,
                    x,
                    y
                );
            }
        }
    }
    // Counters equal a brute-force count.
    for s in a.stats() {
        let pool = pools.iter().find(|p| p.name == s.name).unwrap();
        for (family, st) in [(Family::V4, s.v4), (Family::V6, s.v6)] {
            let total = pool
                .addresses
                .intervals(family)
                .iter()
                .flat_map(|iv| iv.start()..=iv.end())
                .filter(|v| !(pool.avoid_buggy_ips && ferrolb_ipset::is_buggy(family.addr(*v))))
                .count() as u128;
            let used = by_ip
                .keys()
                .filter(|ip| Family::of(**ip) == family && pool.addresses.contains(**ip))
                .count() as u128;
            prop_assert_eq!(
                st,
                FamilyStats {
                    total,
                    used,
                    free: total - used
                },
                "pool {} {}",
                s.name,
                family
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn invariants_hold_under_random_operations(ops in ops()) {
        let pools = pools();
        let mut a = Allocator::new(&pools);
        let mut requests: BTreeMap<ServiceKey, Request> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Allocate(r) => {
                    let before = a.assignment(&r.key).cloned();
                    match a.allocate(&r) {
                        Ok(asg) => {
                            prop_assert_eq!(a.assignment(&r.key), Some(&asg));
                            if !r.requested_ips.is_empty() {
                                prop_assert_eq!(&asg.ips, &r.requested_ips);
                            }
                            requests.insert(r.key.clone(), *r);
                        }
                        // A failure changes nothing for the service.
                        Err(_) => prop_assert_eq!(a.assignment(&r.key).cloned(), before),
                    }
                }
                Op::Release(n) => {
                    let key = requests.keys().nth(n % requests.len().max(1)).cloned();
                    if let Some(key) = key {
                        a.release(&key);
                        requests.remove(&key);
                    }
                }
            }
            check(&a, &pools, &requests)?;
        }
    }

    #[test]
    fn release_then_allocate_round_trips(ops in ops(), r in request()) {
        let pools = pools();
        let mut a = Allocator::new(&pools);
        for op in ops {
            if let Op::Allocate(x) = op {
                let _ = a.allocate(&x);
            }
        }
        a.release(&r.key);
        if let Ok(first) = a.allocate(&r) {
            let stats = a.stats();
            a.release(&r.key);
            let again = a.allocate(&r).unwrap();
            prop_assert_eq!(first, again, "freeing and asking again gives the same addresses");
            prop_assert_eq!(a.stats(), stats);
        }
    }

    #[test]
    fn restore_is_idempotent_and_moves_nothing(ops in ops()) {
        let pools = pools();
        let mut a = Allocator::new(&pools);
        let mut requests: BTreeMap<ServiceKey, Request> = BTreeMap::new();
        for op in ops {
            if let Op::Allocate(r) = op {
                if a.allocate(&r).is_ok() {
                    requests.insert(r.key.clone(), *r);
                }
            }
        }
        let existing: Vec<(Request, Vec<IpAddr>)> = a
            .assignments()
            .map(|(k, asg)| (a.request(k).unwrap().clone(), asg.ips.clone()))
            .collect();
        let before: Vec<(ServiceKey, Assignment)> = a.assignments().map(|(k, v)| (k.clone(), v.clone())).collect();

        // A restarted controller restores from status in any order.
        let mut shuffled = existing.clone();
        shuffled.reverse();
        let mut b = Allocator::new(&pools);
        let report = b.restore(shuffled.clone());
        prop_assert!(report.rejected.is_empty(), "valid state rejected: {:?}", report.rejected);
        let after: Vec<(ServiceKey, Assignment)> = b.assignments().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(&after, &before);
        prop_assert_eq!(b.stats(), a.stats());

        let again = b.restore(shuffled);
        prop_assert_eq!(again.kept.len(), report.kept.len());
        prop_assert!(again.rejected.is_empty());
        let after2: Vec<(ServiceKey, Assignment)> = b.assignments().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(&after2, &before);

        // Reconfiguring with the same pools moves nothing either.
        prop_assert!(b.reconfigure(&pools).is_empty());
        let after3: Vec<(ServiceKey, Assignment)> = b.assignments().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(&after3, &before);
        let _ = requests;
    }

    #[test]
    fn exhaustion_hands_out_exactly_the_usable_addresses(n in 1usize..40) {
        let pools = Config::from_yaml("pools: [{name: p, addresses: [10.0.0.250-10.0.1.5], avoidBuggyIPs: true}]").unwrap().pools;
        let mut a = Allocator::new(&pools);
        let mut got = BTreeSet::new();
        for i in 0..n {
            match a.allocate(&Request::new(ServiceKey::new("ns", format!("s{i}")))) {
                Ok(asg) => prop_assert!(got.insert(to_u128(asg.ips[0]))),
                Err(e) => {
                    prop_assert!(matches!(e, AllocError::Exhausted { .. }), "unexpected {}", e);
                    break;
                }
            }
        }
        // 12 addresses, minus 10.0.0.255 and 10.0.1.0.
        prop_assert_eq!(got.len(), n.min(10));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A Service's request changed while the controller was down (it held
    /// `old` addresses, now asks for what `new` says): restoring what its
    /// status shows and then allocating what it asks gives the same result as
    /// allocating from scratch, so a restart never keeps an address the
    /// Service no longer asks for.
    #[test]
    fn restore_then_allocate_equals_allocating_afresh(old in request(), new in request()) {
        let pools = pools();
        // The old assignment, made as the old request was served.
        let mut before = Allocator::new(&pools);
        let Ok(held) = before.allocate(&old) else { return Ok(()) };
        let mut new = new;
        new.key = old.key.clone();
        // After a restart: the status shows `held`, the Service asks `new`.
        let mut restarted = Allocator::new(&pools);
        let report = restarted.restore(vec![(new.clone(), held.ips.clone())]);
        let kept = report.kept.contains(&new.key);
        let after = if kept {
            restarted.assignment(&new.key).cloned().ok_or_else(|| "kept but not held".to_string())
        } else {
            restarted.allocate(&new).map_err(|e| e.to_string())
        };
        let mut fresh = Allocator::new(&pools);
        let afresh = fresh.allocate(&new).map_err(|e| e.to_string());
        if !new.requested_ips.is_empty() {
            // An explicit request decides alone: both ways agree exactly.
            prop_assert_eq!(after.clone().map(|a| a.ips), afresh.clone().map(|a| a.ips));
        }
        if let Ok(a) = &after {
            if !new.requested_ips.is_empty() {
                prop_assert_eq!(&a.ips, &new.requested_ips);
            }
        }
        // Kept only if the new request would accept exactly those addresses.
        if kept && !new.requested_ips.is_empty() {
            prop_assert_eq!(&held.ips, &new.requested_ips);
        }
    }
}
