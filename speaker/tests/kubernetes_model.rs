//! Eligibility and forwarding plans computed from API objects (pure).

use ferrolb_config::Config;
use ferrolb_speaker::kubernetes::model::{desired, Desired, Filter};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn config() -> Config {
    Config::from_yaml("pools: [{name: web, addresses: [192.0.2.0/24]}]").unwrap()
}

fn merge(a: &mut Value, b: &Value) {
    match (a.as_object_mut(), b.as_object()) {
        (Some(a), Some(b)) => {
            for (k, v) in b {
                if v.is_null() {
                    a.remove(k);
                } else {
                    merge(a.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *a = b.clone(),
    }
}

fn svc(name: &str, ip: Option<&str>, extra: Value) -> Service {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "shop", "annotations": {"ferrolb.io/allocated-from-pool": "web"}},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    });
    if let Some(ip) = ip {
        v["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
    }
    merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

/// An EndpointSlice of `service` with endpoints (ip, node, ready, terminating).
fn slice(service: &str, eps: &[(&str, &str, bool, bool)]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, ready, terminating)| {
            json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready, "terminating": terminating}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-x"), "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn node(name: &str, extra: Value) -> Node {
    let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    merge(&mut v, &extra);
    serde_json::from_value(v).unwrap()
}

fn nodes() -> Vec<Node> {
    vec![
        node("n1", json!({})),
        node("n2", json!({})),
        node("n3", json!({})),
        node(
            "excluded",
            json!({"metadata": {"labels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""}}}),
        ),
        node(
            "broken-net",
            json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "True"}]}}),
        ),
        node("no-speaker", json!({})),
    ]
}

fn speakers() -> BTreeSet<String> {
    ["n1", "n2", "n3", "excluded", "broken-net"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run(me: &str, services: &[Service], slices: &[EndpointSlice], filter: &Filter) -> Desired {
    desired(
        me,
        services,
        slices,
        &nodes(),
        &speakers(),
        &BTreeSet::new(),
        &config(),
        filter,
    )
}

fn candidates(d: &Desired, key: &str) -> Vec<String> {
    let v = d
        .vips
        .iter()
        .find(|v| v.key == key)
        .unwrap_or_else(|| panic!("{key} not announced: {d:?}"));
    v.nodes.clone().unwrap().into_iter().collect()
}

#[test]
fn cluster_policy_candidates_are_the_usable_speaker_nodes() {
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), json!({}))],
        &[slice("a", &[("10.0.0.1", "n2", true, false)])],
        &Filter::default(),
    );
    assert_eq!(candidates(&d, "shop/a"), ["n1", "n2", "n3"]);
    let why: Vec<(&str, &str)> = d
        .excluded
        .iter()
        .map(|e| (e.node.as_str(), e.reason))
        .collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why
        .iter()
        .any(|(n, r)| *n == "excluded" && r.contains("exclude-from-external-load-balancers")));
    assert!(why
        .iter()
        .any(|(n, r)| *n == "broken-net" && r.contains("NetworkUnavailable")));
    // The flag lets the labelled node in; NetworkUnavailable still keeps its node out.
    let lenient = Filter {
        ignore_exclude_label: true,
        ..Filter::default()
    };
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), json!({}))],
        &[slice("a", &[("10.0.0.1", "n2", true, false)])],
        &lenient,
    );
    assert_eq!(candidates(&d, "shop/a"), ["excluded", "n1", "n2", "n3"]);
}

#[test]
fn no_ready_endpoint_means_nobody_announces() {
    let slices = [slice(
        "a",
        &[
            ("10.0.0.1", "n1", false, false),
            ("10.0.0.2", "n2", true, true),
        ],
    )];
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), json!({}))],
        &slices,
        &Filter::default(),
    );
    assert!(candidates(&d, "shop/a").is_empty());
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), json!({}))],
        &[],
        &Filter::default(),
    );
    assert!(candidates(&d, "shop/a").is_empty());
}

#[test]
fn local_policy_keeps_only_nodes_with_a_ready_endpoint() {
    let s = svc(
        "a",
        Some("192.0.2.1"),
        json!({"spec": {"externalTrafficPolicy": "Local"}}),
    );
    let slices = [slice(
        "a",
        &[
            ("10.0.0.1", "n2", true, false),
            ("10.0.0.2", "n3", false, false),
            ("10.0.0.3", "excluded", true, false),
        ],
    )];
    let d = run("n1", &[s], &slices, &Filter::default());
    assert_eq!(candidates(&d, "shop/a"), ["n2"]);
}

#[test]
fn only_handled_assigned_services_in_known_pools() {
    let services = [
        svc("pending", None, json!({})),
        svc(
            "theirs",
            Some("192.0.2.2"),
            json!({"spec": {"loadBalancerClass": "other.io/lb"}}),
        ),
        svc(
            "clusterip",
            Some("192.0.2.3"),
            json!({"spec": {"type": "ClusterIP"}}),
        ),
        svc(
            "outside",
            Some("203.0.113.1"),
            json!({"metadata": {"annotations": {"ferrolb.io/allocated-from-pool": null}}}),
        ),
        // Status written by another tool: the pool is found from the address.
        svc(
            "migrated",
            Some("192.0.2.4"),
            json!({"metadata": {"annotations": {"ferrolb.io/allocated-from-pool": null}}}),
        ),
    ];
    let d = run("n1", &services, &[], &Filter::default());
    let keys: Vec<&str> = d.vips.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["shop/migrated"]);
    assert_eq!(d.vips[0].pool, "web");
    assert_eq!(d.problems.len(), 1);
    assert!(
        d.problems[0]
            .1
            .contains("203.0.113.1 is in no configured pool"),
        "{:?}",
        d.problems
    );
    let strict = Filter {
        ignore_classless: true,
        ..Filter::default()
    };
    assert!(run("n1", &services, &[], &strict).vips.is_empty());
}

#[test]
fn forwarded_services_get_ready_endpoints_as_backends() {
    let fwd = json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}, "spec": {"loadBalancerSourceRanges": ["198.51.100.0/24"]}});
    let slices = [slice(
        "a",
        &[
            ("10.0.0.1", "n1", true, false),
            ("10.0.0.2", "n2", true, false),
            ("10.0.0.9", "n3", false, false),
        ],
    )];
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), fwd.clone())],
        &slices,
        &Filter::default(),
    );
    assert_eq!(d.plan.services.len(), 1);
    let p = &d.plan.services[0];
    assert_eq!(p.service.name, "shop/a");
    assert_eq!(
        p.assignment.ips,
        vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(p.service.source_ranges.len(), 1);
    let backends: Vec<String> = p.service.ports[0]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(
        backends,
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "target ports, ready endpoints only"
    );
    assert_eq!(p.service.ports[0].port, 80);
    assert!(
        p.service.ports[0].health_check.is_some(),
        "active checks on by default"
    );

    // Local policy: only this node's endpoints.
    let mut local = fwd.clone();
    local["spec"]["externalTrafficPolicy"] = json!("Local");
    let d = run(
        "n2",
        &[svc("a", Some("192.0.2.1"), local.clone())],
        &slices,
        &Filter::default(),
    );
    let backends: Vec<String> = d.plan.services[0].service.ports[0]
        .backends
        .iter()
        .map(|b| b.address.to_string())
        .collect();
    assert_eq!(backends, ["10.0.0.2:8080"]);
    // A node that may not announce it does not forward it.
    assert!(run(
        "n3",
        &[svc("a", Some("192.0.2.1"), local)],
        &slices,
        &Filter::default()
    )
    .plan
    .services
    .is_empty());
    // Without the annotation nothing is forwarded (ipMode VIP: kube-proxy delivers).
    assert!(run(
        "n1",
        &[svc("a", Some("192.0.2.1"), json!({}))],
        &slices,
        &Filter::default()
    )
    .plan
    .services
    .is_empty());
}

#[test]
fn an_unreadable_source_range_is_never_treated_as_open() {
    let bad = json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}, "spec": {"loadBalancerSourceRanges": ["10.0.0.0/33"]}});
    let slices = [slice("a", &[("10.0.0.1", "n1", true, false)])];
    let d = run(
        "n1",
        &[svc("a", Some("192.0.2.1"), bad)],
        &slices,
        &Filter::default(),
    );
    assert!(d.plan.services.is_empty());
    assert!(
        d.problems[0].1.contains("loadBalancerSourceRanges"),
        "{:?}",
        d.problems
    );
    // The VIP itself is still announced (traffic for other services sharing it keeps flowing).
    assert_eq!(candidates(&d, "shop/a"), ["n1", "n2", "n3"]);
}
