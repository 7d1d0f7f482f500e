//! The real `ferrolb-controller` binary against the fake API server,
//! through the real kube client: allocation at scale, stability across
//! restarts and leader changes, requests, sharing, dual stack, classes,
//! releases, configuration errors and Events.

use ferrolb_tests::cluster::{Cluster, Controller, SYSTEM_NS};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

const CONFIG: &str = "
pools:
  - name: general
    addresses: [192.0.2.0/24]
  - name: v6
    addresses: [2001:db8::/120]
  - name: reserved
    addresses: [198.51.100.0/28]
    autoAssign: false
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn in_net(addr: &str, net: &str, len: u32) -> bool {
    let (a, n) = (
        u32::from(addr.parse::<std::net::Ipv4Addr>().unwrap()),
        u32::from(net.parse::<std::net::Ipv4Addr>().unwrap()),
    );
    a >> (32 - len) == n >> (32 - len)
}

/// Every Service's ingress IPs, from the store.
fn all_ingress(c: &Cluster) -> BTreeMap<String, Vec<String>> {
    c.server
        .list("services", "")
        .iter()
        .map(|s| {
            let key = format!(
                "{}/{}",
                s["metadata"]["namespace"].as_str().unwrap(),
                s["metadata"]["name"].as_str().unwrap()
            );
            let ips = s
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["ip"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (key, ips)
        })
        .collect()
}

fn assert_unique(map: &BTreeMap<String, Vec<String>>) {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (svc, ips) in map {
        for ip in ips {
            if let Some(other) = seen.insert(ip, svc) {
                panic!("{ip} is assigned to both {other} and {svc}");
            }
        }
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Status writes (object or status) to Services since the log was cleared.
fn service_writes(c: &Cluster) -> usize {
    c.server
        .requests()
        .iter()
        .filter(|r| r.resource == "services" && matches!(r.verb, "patch" | "update" | "create"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_services_get_unique_ips_from_the_right_pools_and_a_restart_moves_none() {
    let c = Cluster::start().await;
    c.set_config(
        "
pools:
  - name: team-b
    addresses: [10.1.0.0/22]
    namespaces: [team-b]
    priority: 1
  - name: general
    addresses: [10.0.0.0/22]
",
    )
    .await;
    let mut ctl = Controller::start(&c, "first", &[]).await;
    let names: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                if i % 5 == 0 { "team-b" } else { "team-a" }.to_string(),
                format!("svc-{i:04}"),
            )
        })
        .collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(32, |(ns, name)| {
            let c = &c;
            async move {
                c.create_service(ns, name, json!({})).await;
            }
        })
        .await;
    wait_until("1000 services with an IP", Duration::from_secs(60), || {
        all_ingress(&c).values().filter(|v| v.len() == 1).count() == 1000
    })
    .await;
    let before = all_ingress(&c);
    assert_unique(&before);
    for (svc, ips) in &before {
        let (pool, net) = if svc.starts_with("team-b/") {
            ("team-b", "10.1.0.0")
        } else {
            ("general", "10.0.0.0")
        };
        assert!(
            in_net(&ips[0], net, 22),
            "{svc} got {ips:?}, outside {pool}"
        );
        let (ns, name) = svc.split_once('/').unwrap();
        let s = c.service(ns, name);
        assert_eq!(
            s["metadata"]["annotations"]["ferrolb.io/allocated-from-pool"], pool,
            "{svc}"
        );
        assert_eq!(
            s["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP",
            "{svc}"
        );
    }
    ctl.wait_metric("ferrolb_controller_services_allocated", &[], 1000.0, T)
        .await;
    ctl.wait_metric(
        "ferrolb_controller_pool_addresses",
        &["pool=\"team-b\"", "state=\"used\""],
        200.0,
        T,
    )
    .await;

    // A hard kill and a new replica: nothing moves, nothing is written.
    ctl.kill("KILL");
    c.server.clear_requests();
    let ctl2 = Controller::start(&c, "second", &[]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all_ingress(&c), before, "a restart moved an address");
    assert_eq!(
        service_writes(&c),
        0,
        "the restarted controller rewrote Services: {:?}",
        c.server
            .requests()
            .iter()
            .filter(|r| r.resource == "services" && r.verb != "list" && r.verb != "watch")
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ctl2.metric("ferrolb_controller_allocations_total", &[])
            .await,
        0.0
    );
    // And the next one gets a fresh address.
    c.create_service("team-a", "after-restart", json!({})).await;
    let ips = c.wait_ingress("team-a", "after-restart", 1, T).await;
    assert!(
        !before.values().any(|v| v.contains(&ips[0])),
        "{ips:?} was already in use"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_and_pools() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    c.create_service(
        "ns",
        "ann",
        json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "192.0.2.77"}}}),
    )
    .await;
    c.create_service(
        "ns",
        "legacy",
        json!({"metadata": {"annotations": {"metallb.universe.tf/loadBalancerIPs": "192.0.2.78"}}}),
    )
    .await;
    c.create_service(
        "ns",
        "spec",
        json!({"spec": {"loadBalancerIP": "192.0.2.79"}}),
    )
    .await;
    c.create_service(
        "ns",
        "pool",
        json!({"metadata": {"annotations": {"metallb.io/address-pool": "reserved"}}}),
    )
    .await;
    assert_eq!(c.wait_ingress("ns", "ann", 1, T).await, ["192.0.2.77"]);
    assert_eq!(c.wait_ingress("ns", "legacy", 1, T).await, ["192.0.2.78"]);
    assert_eq!(c.wait_ingress("ns", "spec", 1, T).await, ["192.0.2.79"]);
    assert_eq!(c.wait_ingress("ns", "pool", 1, T).await, ["198.51.100.0"]);
    let note = c.wait_event("ns", "ann", "IPAllocated", T).await;
    assert!(
        note.contains("192.0.2.77") && note.contains("general"),
        "{note}"
    );

    // Failures are Events with the reason, and the Service stays pending.
    c.create_service(
        "ns",
        "outside",
        json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "203.0.113.9"}}}),
    )
    .await;
    c.create_service(
        "ns",
        "taken",
        json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "192.0.2.77"}}}),
    )
    .await;
    c.create_service(
        "ns",
        "nopool",
        json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "missing"}}}),
    )
    .await;
    c.create_service(
        "ns",
        "garbage",
        json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "not-an-ip"}}}),
    )
    .await;
    assert!(c
        .wait_event("ns", "outside", "AllocationFailed", T)
        .await
        .contains("outside every pool"));
    assert!(c
        .wait_event("ns", "taken", "AllocationFailed", T)
        .await
        .contains("held by ns/ann"));
    assert!(c
        .wait_event("ns", "nopool", "AllocationFailed", T)
        .await
        .contains("\"missing\" does not exist"));
    assert!(c
        .wait_event("ns", "garbage", "AllocationFailed", T)
        .await
        .contains("not an IP address"));
    for name in ["outside", "taken", "nopool", "garbage"] {
        assert!(c.ingress("ns", name).is_empty(), "{name} got an address");
        let warnings = c.events_for("ns", name);
        assert_eq!(warnings.len(), 1, "one Event per failure: {warnings:?}");
        assert_eq!(warnings[0].0, "Warning");
    }
    // Freeing the address lets the waiting service have it.
    c.delete_service("ns", "ann").await;
    assert_eq!(c.wait_ingress("ns", "taken", 1, T).await, ["192.0.2.77"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_keys_with_and_without_port_collisions() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    let shared = |port: u16, proto: &str| {
        json!({"metadata": {"annotations": {"ferrolb.io/allow-shared-ip": "dns"}},
               "spec": {"ports": [{"port": port, "protocol": proto}]}})
    };
    c.create_service("ns", "dns-tcp", shared(53, "TCP")).await;
    let a = c.wait_ingress("ns", "dns-tcp", 1, T).await;
    c.create_service("ns", "dns-udp", shared(53, "UDP")).await;
    assert_eq!(
        c.wait_ingress("ns", "dns-udp", 1, T).await,
        a,
        "TCP 53 and UDP 53 share"
    );
    c.create_service("ns", "dns-tcp-2", shared(53, "TCP")).await;
    let b = c.wait_ingress("ns", "dns-tcp-2", 1, T).await;
    assert_ne!(a, b, "a colliding port gets another address");
    // Asking for the shared address with a colliding port fails with the reason.
    let mut req = shared(53, "UDP");
    req["metadata"]["annotations"]["ferrolb.io/loadBalancerIPs"] = json!(b[0]);
    c.create_service("ns", "dns-udp-2", req).await;
    assert_eq!(c.wait_ingress("ns", "dns-udp-2", 1, T).await, b);
    let mut req = shared(53, "UDP");
    req["metadata"]["annotations"]["ferrolb.io/loadBalancerIPs"] = json!(a[0]);
    c.create_service("ns", "dns-udp-3", req).await;
    let note = c.wait_event("ns", "dns-udp-3", "AllocationFailed", T).await;
    assert!(note.contains("already exposes 53/UDP"), "{note}");
    // Without a key, no sharing.
    let mut req = json!({"spec": {"ports": [{"port": 8080}]}});
    req["metadata"] = json!({"annotations": {"ferrolb.io/loadBalancerIPs": a[0]}});
    c.create_service("ns", "unshared", req).await;
    assert!(c
        .wait_event("ns", "unshared", "AllocationFailed", T)
        .await
        .contains("allow-shared-ip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_policies() {
    let c = Cluster::start().await;
    c.set_config(
        "
pools:
  - name: both
    addresses: [192.0.2.0/28, 2001:db8::/124]
    namespaces: [both]
  - name: v4only
    addresses: [198.51.100.0/28]
    namespaces: [v4]
",
    )
    .await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    let fam = |policy: &str, families: Value| json!({"spec": {"ipFamilyPolicy": policy, "ipFamilies": families}});
    c.create_service(
        "both",
        "require",
        fam("RequireDualStack", json!(["IPv6", "IPv4"])),
    )
    .await;
    let ips = c.wait_ingress("both", "require", 2, T).await;
    assert!(
        ip(&ips[0]).is_ipv6() && ip(&ips[1]).is_ipv4(),
        "primary family first: {ips:?}"
    );
    c.create_service("both", "single6", fam("SingleStack", json!(["IPv6"])))
        .await;
    assert!(ip(&c.wait_ingress("both", "single6", 1, T).await[0]).is_ipv6());
    c.create_service(
        "v4",
        "prefer",
        fam("PreferDualStack", json!(["IPv4", "IPv6"])),
    )
    .await;
    assert!(
        ip(&c.wait_ingress("v4", "prefer", 1, T).await[0]).is_ipv4(),
        "PreferDualStack falls back to one family"
    );
    c.create_service(
        "v4",
        "require",
        fam("RequireDualStack", json!(["IPv4", "IPv6"])),
    )
    .await;
    let note = c.wait_event("v4", "require", "AllocationFailed", T).await;
    assert!(note.contains("IPv6"), "{note}");
    assert!(c.ingress("v4", "require").is_empty());
    c.create_service("elsewhere", "x", json!({})).await;
    assert!(c
        .wait_event("elsewhere", "x", "AllocationFailed", T)
        .await
        .contains("no pool allows"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_filtering() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    c.create_service("ns", "classless", json!({})).await;
    c.create_service(
        "ns",
        "ours",
        json!({"spec": {"loadBalancerClass": "ferrolb.io/lb"}}),
    )
    .await;
    c.create_service(
        "ns",
        "theirs",
        json!({"spec": {"loadBalancerClass": "example.com/other"}}),
    )
    .await;
    c.create_service("ns", "clusterip", json!({"spec": {"type": "ClusterIP"}}))
        .await;
    c.wait_ingress("ns", "classless", 1, T).await;
    c.wait_ingress("ns", "ours", 1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in ["theirs", "clusterip"] {
        assert!(c.ingress("ns", name).is_empty(), "{name}");
        assert!(
            c.events_for("ns", name).is_empty(),
            "{name}: {:?}",
            c.events_for("ns", name)
        );
    }
    drop(_ctl);

    // With --ignore-classless and a custom class.
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let _ctl = Controller::start(
        &c,
        "two",
        &[
            "--ignore-classless",
            "--load-balancer-class",
            "example.com/mine",
        ],
    )
    .await;
    c.create_service("ns", "classless", json!({})).await;
    c.create_service(
        "ns",
        "mine",
        json!({"spec": {"loadBalancerClass": "example.com/mine"}}),
    )
    .await;
    c.wait_ingress("ns", "mine", 1, T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.ingress("ns", "classless").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_change_and_deletion_release() {
    let c = Cluster::start().await;
    c.set_config("pools:\n  - name: two\n    addresses: [192.0.2.1-192.0.2.2]\n")
        .await;
    let ctl = Controller::start(&c, "one", &[]).await;
    c.create_service("ns", "a", json!({})).await;
    c.create_service("ns", "b", json!({})).await;
    let a = c.wait_ingress("ns", "a", 1, T).await;
    c.wait_ingress("ns", "b", 1, T).await;
    c.create_service("ns", "waiting", json!({})).await;
    assert!(c
        .wait_event("ns", "waiting", "AllocationFailed", T)
        .await
        .contains("no free IPv4 address"));

    c.patch_service("ns", "a", json!({"spec": {"type": "ClusterIP"}}))
        .await;
    assert!(c
        .wait_event("ns", "a", "IPReleased", T)
        .await
        .contains(&a[0]));
    c.wait_ingress("ns", "a", 0, T).await;
    wait_until("the pool annotation removed", T, || {
        c.service("ns", "a")["metadata"]["annotations"]
            .get("ferrolb.io/allocated-from-pool")
            .is_none()
    })
    .await;
    assert_eq!(
        c.wait_ingress("ns", "waiting", 1, T).await,
        a,
        "the freed address goes to the waiting service"
    );

    let b = c.ingress("ns", "b");
    c.delete_service("ns", "b").await;
    c.create_service("ns", "c", json!({})).await;
    assert_eq!(c.wait_ingress("ns", "c", 1, T).await, b);
    ctl.wait_metric("ferrolb_controller_releases_total", &[], 2.0, T)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configmap_keeps_the_last_good_config_and_warns_once() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let ctl = Controller::start(&c, "one", &[]).await;
    c.create_service("ns", "before", json!({})).await;
    let before = c.wait_ingress("ns", "before", 1, T).await;
    c.set_config("pools:\n  - name: broken\n    addresses: [10.0.0.0/33]\n")
        .await;
    let note = c
        .wait_event(SYSTEM_NS, "ferrolb-config", "ConfigInvalid", T)
        .await;
    assert!(
        note.contains("pools[0].addresses") && note.contains("last valid configuration stays"),
        "{note}"
    );
    ctl.wait_metric("ferrolb_controller_config_stale", &[], 1.0, T)
        .await;
    // The same broken content again (another field changes): no second Event.
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(c.client.clone(), SYSTEM_NS);
    api.patch(
        "ferrolb-config",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await
    .unwrap();
    // Allocation goes on from the last good pools, nothing moved.
    c.create_service("ns", "during", json!({})).await;
    assert!(in_net(
        &c.wait_ingress("ns", "during", 1, T).await[0],
        "192.0.2.0",
        24
    ));
    assert_eq!(c.ingress("ns", "before"), before);
    let invalid = c.events_for(SYSTEM_NS, "ferrolb-config");
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!(invalid[0].0, "Warning");
    c.set_config(CONFIG).await;
    ctl.wait_metric("ferrolb_controller_config_stale", &[], 0.0, T)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_pool_reallocates_with_events() {
    let c = Cluster::start().await;
    let two = "
pools:
  - name: old
    addresses: [203.0.113.0/28]
    priority: 1
  - name: new
    addresses: [192.0.2.0/28]
";
    c.set_config(two).await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    c.create_service("ns", "x", json!({})).await;
    assert_eq!(c.wait_ingress("ns", "x", 1, T).await, ["203.0.113.0"]);
    c.set_config("pools:\n  - name: new\n    addresses: [192.0.2.0/28]\n")
        .await;
    wait_until("x moved to the remaining pool", T, || {
        c.ingress("ns", "x") == ["192.0.2.0"]
    })
    .await;
    // Events are published off the controller's loop: they may trail the status.
    wait_until("the IPReleased warning and the new IPAllocated", T, || {
        let ev = c.events_for("ns", "x");
        ev.iter()
            .any(|(t, r, n)| t == "Warning" && r == "IPReleased" && n.contains("no longer allows"))
            && ev
                .iter()
                .any(|(_, r, n)| r == "IPAllocated" && n.contains("192.0.2.0 from pool \"new\""))
    })
    .await;
    wait_until("the pool annotation", T, || {
        c.service("ns", "x")["metadata"]["annotations"]["ferrolb.io/allocated-from-pool"] == "new"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ips_after_restart_resolve_to_the_older_service() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    // Two Services whose status claims the same address (as a buggy predecessor may leave them).
    for name in ["zz-older", "aa-younger"] {
        c.create_service("ns", name, json!({})).await;
        let api: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(c.client.clone(), "ns");
        api.patch_status(
            name,
            &Default::default(),
            &kube::api::Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}}}),
            ),
        )
        .await
        .unwrap();
        // creationTimestamp has one-second resolution.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let _ctl = Controller::start(&c, "one", &[]).await;
    wait_until("the younger service moves", T, || {
        c.ingress("ns", "aa-younger") != ["192.0.2.50"] && c.ingress("ns", "aa-younger").len() == 1
    })
    .await;
    assert_eq!(
        c.ingress("ns", "zz-older"),
        ["192.0.2.50"],
        "the older service keeps the address"
    );
    let note = c.wait_event("ns", "aa-younger", "IPReleased", T).await;
    assert!(note.contains("ns/zz-older"), "{note}");
    assert_eq!(
        c.events_for("ns", "aa-younger")
            .iter()
            .filter(|e| e.0 == "Warning")
            .count(),
        1
    );
    assert_unique(&all_ingress(&c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies_and_never_duplicates() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let mut a = Controller::spawn(&c, "alpha", &[]);
    let mut b = Controller::spawn(&c, "beta", &[]);
    wait_until("a leader", T, || c.leader().is_some()).await;
    let leader_id = c.leader().unwrap();
    let (leader, standby) = if leader_id == "alpha" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.wait_leading(T).await;
    assert_eq!(standby.metric("ferrolb_controller_leader", &[]).await, 0.0);
    for i in 0..20 {
        c.create_service("ns", &format!("before-{i}"), json!({}))
            .await;
    }
    for i in 0..20 {
        c.wait_ingress("ns", &format!("before-{i}"), 1, T).await;
    }
    // Only the leader writes: the standby has not touched a Service.
    let before = all_ingress(&c);
    leader.kill("KILL");
    let killed = Instant::now();
    for i in 0..20 {
        c.create_service("ns", &format!("after-{i}"), json!({}))
            .await;
    }
    for i in 0..20 {
        c.wait_ingress("ns", &format!("after-{i}"), 1, Duration::from_secs(15))
            .await;
    }
    let took = killed.elapsed();
    assert_eq!(c.leader().as_deref(), Some(standby.identity.as_str()));
    let after = all_ingress(&c);
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} moved during the leader change");
    }
    assert_unique(&after);
    assert_eq!(after.values().filter(|v| v.len() == 1).count(), 40);
    eprintln!("standby assigned new services {took:?} after the leader was killed (lease 2 s)");
    // A graceful stop hands over at once: the Lease is released.
    let survivor = standby;
    let mut third = Controller::spawn(&c, "gamma", &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    survivor.kill("TERM");
    let stopped = Instant::now();
    third.wait_leading(T).await;
    eprintln!(
        "after SIGTERM the next replica led in {:?}",
        stopped.elapsed()
    );
    c.create_service("ns", "third", json!({})).await;
    c.wait_ingress("ns", "third", 1, T).await;
    assert_unique(&all_ingress(&c));
    third.kill("TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_and_metrics() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let ctl = Controller::start(&c, "one", &[]).await;
    c.create_service(
        "ns",
        "fwd",
        json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}}),
    )
    .await;
    c.wait_ingress("ns", "fwd", 1, T).await;
    assert_eq!(
        c.service("ns", "fwd")["status"]["loadBalancer"]["ingress"][0]["ipMode"],
        "Proxy"
    );
    // Switching forwarding off rewrites ipMode and keeps the address.
    let ip_before = c.ingress("ns", "fwd");
    c.patch_service(
        "ns",
        "fwd",
        json!({"metadata": {"annotations": {"ferrolb.io/forward": null}}}),
    )
    .await;
    wait_until("ipMode VIP", T, || {
        c.service("ns", "fwd")["status"]["loadBalancer"]["ingress"][0]["ipMode"] == "VIP"
    })
    .await;
    assert_eq!(c.ingress("ns", "fwd"), ip_before);
    assert_eq!(ctl.metric("ferrolb_controller_leader", &[]).await, 1.0);
    assert_eq!(
        ctl.metric("ferrolb_controller_config_loaded", &[]).await,
        1.0
    );
    assert_eq!(
        ctl.metric(
            "ferrolb_controller_pool_addresses",
            &["pool=\"general\"", "state=\"total\""]
        )
        .await,
        256.0
    );
    ctl.wait_metric(
        "ferrolb_controller_pool_addresses",
        &["pool=\"general\"", "state=\"used\""],
        1.0,
        T,
    )
    .await;
    assert!(
        ctl.metric("ferrolb_controller_reconcile_seconds_count", &[])
            .await
            >= 1.0
    );
    let used: BTreeSet<String> = c
        .server
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.verb, r.resource))
        .collect();
    assert!(used.contains("patch services"), "{used:?}");
    assert!(used.contains("create events.events.k8s.io"), "{used:?}");
}

/// On a single-stack (IPv4) cluster the API server gives a PreferDualStack
/// Service `ipFamilies: [IPv4]`, and refuses RequireDualStack. The Service
/// then gets an IPv4 address only, even from a pool with both families: an
/// IPv6 address would be one kube-proxy never programs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_stack_cluster_gives_one_family_whatever_the_pool_has() {
    let c = Cluster::start_with(ferrolb_kubefake::Options {
        stack: ferrolb_kubefake::strategy::Stack::Ipv4,
        ..ferrolb_kubefake::Options::default()
    })
    .await;
    c.set_config("pools: [{name: both, addresses: [192.0.2.0/28, \"2001:db8::/124\"]}]\n")
        .await;
    let _ctl = Controller::start(&c, "one", &[]).await;
    c.create_service(
        "ns",
        "prefer",
        json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}}),
    )
    .await;
    let ips = c.wait_ingress("ns", "prefer", 1, T).await;
    // Give a wrong second address time to appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ips_later = c.ingress("ns", "prefer");
    assert_eq!(ips_later, ips, "one address only");
    assert!(ip(&ips[0]).is_ipv4(), "{ips:?}");
    assert_eq!(
        c.service("ns", "prefer")["spec"]["ipFamilies"],
        json!(["IPv4"]),
        "as the API server set it"
    );
}

/// A Pod name may have 253 characters; the API takes field manager names of
/// at most 128. The controller's Lease writes use a bounded name, so a long
/// identity still leads and assigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_with_a_253_character_identity_still_leads() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let identity = format!("ferrolb-controller-{}", "x".repeat(234));
    assert_eq!(identity.len(), 253);
    let _ctl = Controller::start(&c, &identity, &[]).await;
    c.create_service("ns", "web", json!({})).await;
    c.wait_ingress("ns", "web", 1, T).await;
}

/// A Service's requested address changes while the controller is down: on
/// start the controller moves it to the new request (with Events), and a
/// request outside every pool is an AllocationFailed, never a silently kept
/// old address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_changed_while_the_controller_was_down_is_honoured_on_restart() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    let ask = |ip: &str| json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": ip}}});
    let ctl = Controller::start(&c, "first", &[]).await;
    c.create_service("ns", "moved", ask("192.0.2.10")).await;
    c.create_service("ns", "lost", ask("192.0.2.11")).await;
    c.wait_ingress("ns", "moved", 1, T).await;
    c.wait_ingress("ns", "lost", 1, T).await;
    drop(ctl);
    c.patch_service("ns", "moved", ask("192.0.2.20")).await;
    c.patch_service("ns", "lost", ask("203.0.113.5")).await;
    let _ctl = Controller::start(&c, "second", &[]).await;
    wait_until("the moved Service at its new address", T, || {
        c.ingress("ns", "moved") == vec!["192.0.2.20".to_string()]
    })
    .await;
    let note = c.wait_event("ns", "lost", "AllocationFailed", T).await;
    assert!(note.contains("203.0.113.5"), "{note}");
    wait_until("the old address released", T, || {
        c.ingress("ns", "lost").is_empty()
    })
    .await;
    let released = c.wait_event("ns", "moved", "IPReleased", T).await;
    assert!(released.contains("192.0.2.10"), "{released}");
}

/// A Lease name other than the default works only with RBAC that names it:
/// with the shipped Role the controller is refused (403, named in its log)
/// and assigns nothing; with the Role's `resourceNames` changed as
/// docs/kubernetes.md says, it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_lease_needs_the_matching_rbac() {
    let c = Cluster::start().await;
    c.set_config(CONFIG).await;
    c.create_service("ns", "web", json!({})).await;
    let refused = Controller::spawn(&c, "renamed-1", &["--lease-name", "ferrolb-leader"]);
    wait_until("the refusal in the log", T, || {
        let log = refused.log();
        log.contains("forbidden") || log.contains("Forbidden")
    })
    .await;
    assert!(
        refused.log().contains("ferrolb-leader"),
        "{}",
        refused.log()
    );
    assert!(
        c.ingress("ns", "web").is_empty(),
        "assigned without leading"
    );
    drop(refused);
    // The one line docs/kubernetes.md says to change: the Role's resourceNames.
    let roles = ferrolb_kubefake::resource::by_name("roles", "rbac.authorization.k8s.io").unwrap();
    let mut role = c
        .server
        .store()
        .get(roles, Some(SYSTEM_NS), "ferrolb-controller")
        .unwrap();
    for rule in role["rules"].as_array_mut().unwrap() {
        if rule.get("resourceNames").is_some() {
            rule["resourceNames"] = json!(["ferrolb-leader"]);
        }
    }
    c.server
        .store()
        .update(
            roles,
            Some(SYSTEM_NS),
            "ferrolb-controller",
            false,
            role,
            "kubectl",
        )
        .unwrap();
    let _ctl = Controller::start(&c, "renamed-2", &["--lease-name", "ferrolb-leader"]).await;
    c.wait_ingress("ns", "web", 1, T).await;
    assert!(c.leader().is_none(), "the default Lease stays unused");
}

/// Pools' `namespaceSelector` (MetalLB's `namespaceSelectors`) against
/// real Namespace objects: a Service in a selected namespace gets the
/// pool's address, one elsewhere does not; labelling its namespace later
/// gives a waiting Service the address; a restart restores every address
/// as it was (the labels are read before the first allocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_selectors_follow_the_namespaces_labels_and_a_restart_moves_none() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    let c = Cluster::start().await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    for (name, team) in [("checkout", Some("payments")), ("web", None)] {
        let mut ns = json!({"metadata": {"name": name}});
        if let Some(t) = team {
            ns["metadata"]["labels"] = json!({"team": t});
        }
        namespaces
            .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
            .await
            .unwrap();
    }
    c.set_config(
        "
pools:
  - name: payments
    addresses: [10.9.0.0/30]
    namespaceSelector: {matchLabels: {team: payments}}
",
    )
    .await;
    let ctl = Controller::start(&c, "first", &[]).await;
    c.create_service("checkout", "pay", json!({})).await;
    let ips = c.wait_ingress("checkout", "pay", 1, T).await;
    assert!(in_net(&ips[0], "10.9.0.0", 30), "{ips:?}");
    // Not selected: it waits, and says why.
    c.create_service("web", "shop", json!({})).await;
    let note = c.wait_event("web", "shop", "AllocationFailed", T).await;
    assert!(note.contains("namespaceSelector (team=payments)"), "{note}");
    assert!(c.ingress("web", "shop").is_empty());
    // Its namespace gets the label: now it is selected.
    namespaces
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "payments"}}})),
        )
        .await
        .unwrap();
    let shop = c.wait_ingress("web", "shop", 1, T).await;
    assert!(in_net(&shop[0], "10.9.0.0", 30), "{shop:?}");
    // A hard kill and a new replica: both addresses stay where they are.
    let before = all_ingress(&c);
    let mut ctl = ctl;
    ctl.kill("KILL");
    c.server.clear_requests();
    let ctl2 = Controller::start(&c, "second", &[]).await;
    ctl2.wait_leading(T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all_ingress(&c), before, "a restart moved an address");
    assert_eq!(
        service_writes(&c),
        0,
        "the restarted controller rewrote Services"
    );
}
