//! The controller's decisions without any server: restore before
//! allocate, stability, releases, Event de-duplication, write suppression.

use ferrolb_alloc::ServiceKey;
use ferrolb_config::Config;
use ferrolb_controller::core::{Core, Desired, Output, Regarding, Severity};
use ferrolb_controller::service::{view, ClassFilter, ServiceView};
use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};
use std::net::IpAddr;

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml).unwrap()
}

const TWO_POOLS: &str = "
pools:
  - name: a
    addresses: [10.0.0.1-10.0.0.3]
    priority: 1
  - name: b
    addresses: [10.0.1.0/30]
";

/// A Service view; `status` lists ingress IPs; `created` orders restores.
fn svc(name: &str, created: u32, extra: Value, status: &[&str]) -> ServiceView {
    let mut v = json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                     "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", created / 60, created % 60)},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    });
    if !status.is_empty() {
        let ingress: Vec<Value> = status
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        v["status"] = json!({"loadBalancer": {"ingress": ingress}});
    }
    merge(&mut v, &extra);
    let s: Service = serde_json::from_value(v).unwrap();
    view(&s, &ClassFilter::default())
}

fn merge(a: &mut Value, b: &Value) {
    match (a.as_object_mut(), b.as_object()) {
        (Some(a), Some(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        _ => *a = b.clone(),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn writes(out: &[Output]) -> Vec<(String, Vec<IpAddr>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Status { key, desired, .. } => {
                Some((key.name.to_string(), desired.ips.clone()))
            }
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<(String, &'static str, Severity, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some((
                match &e.regarding {
                    Regarding::Service(k, _) => k.name.to_string(),
                    Regarding::Config => "<config>".into(),
                },
                e.reason,
                e.severity,
                e.note.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// Feeds the observed state the runner would see after a write.
fn written(core: &mut Core, out: &[Output], base: &ServiceView) -> Vec<Output> {
    let mut v = base.clone();
    for o in out {
        if let Output::Status { key, desired, .. } = o {
            if *key == v.key {
                v.observed.ips = desired.ips.clone();
                v.observed.ip_modes = desired
                    .ips
                    .iter()
                    .map(|_| Some(desired.ip_mode.to_string()))
                    .collect();
                v.observed.pool = desired.pool.clone();
            }
        }
    }
    core.upsert(v)
}

#[test]
fn nothing_happens_before_sync_and_config() {
    let mut core = Core::new();
    assert!(core.upsert(svc("x", 1, json!({}), &[])).is_empty());
    assert!(core.synced().is_empty(), "no configuration yet");
    assert!(!core.started());
    let out = core.config_changed(Ok(config(TWO_POOLS)));
    assert!(core.started());
    assert_eq!(writes(&out), [("x".to_string(), ips(&["10.0.0.1"]))]);
    assert_eq!(events(&out)[0].1, "IPAllocated");
}

#[test]
fn restore_keeps_every_address_and_writes_nothing() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    // Status as a previous controller left it, pool annotation included.
    let mut a = svc("a", 1, json!({}), &["10.0.0.3"]);
    a.observed.pool = Some("a".into());
    let mut b = svc("b", 2, json!({}), &["10.0.1.1"]);
    b.observed.pool = Some("b".into());
    let fresh = svc("c", 3, json!({}), &[]);
    core.upsert(fresh);
    core.upsert(a);
    core.upsert(b);
    let out = core.synced();
    // Only the new service is written; it gets the lowest free address, not one of the restored ones.
    assert_eq!(writes(&out), [("c".to_string(), ips(&["10.0.0.1"]))]);
    assert_eq!(events(&out).len(), 1);
}

#[test]
fn duplicate_after_restart_older_wins_with_a_warning_on_the_loser() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.upsert(svc("young", 9, json!({}), &["10.0.0.2"]));
    core.upsert(svc("old", 1, json!({}), &["10.0.0.2"]));
    let out = core.synced();
    let ev = events(&out);
    assert!(
        ev.iter().any(|(who, r, s, note)| who == "young"
            && *r == "IPReleased"
            && *s == Severity::Warning
            && note.contains("ns/old")),
        "{ev:?}"
    );
    let w = writes(&out);
    assert!(
        w.contains(&("young".to_string(), ips(&["10.0.0.1"]))),
        "{w:?}"
    );
    // The older one keeps its address (its only write adds the missing pool annotation).
    assert!(
        w.iter()
            .filter(|(n, _)| n == "old")
            .all(|(_, i)| *i == ips(&["10.0.0.2"])),
        "{w:?}"
    );
}

#[test]
fn invalid_request_keeps_its_address_and_reports_once() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let base = svc("x", 1, json!({}), &[]);
    let out = core.upsert(base.clone());
    let _ = written(&mut core, &out, &base);
    let mut bad = svc(
        "x",
        1,
        json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "nonsense"}}}),
        &["10.0.0.1"],
    );
    bad.observed.pool = Some("a".into());
    let out = core.upsert(bad.clone());
    let ev = events(&out);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].1, "AllocationFailed");
    assert!(
        ev[0].3.contains("not an IP address") && ev[0].3.contains("keeping 10.0.0.1"),
        "{}",
        ev[0].3
    );
    assert!(writes(&out).is_empty(), "nothing that works is changed");
    // The same problem again (a resync) is not reported again.
    assert!(core.upsert(bad).is_empty());
    assert_eq!(core.tally().failures["invalid_request"], 1);
}

#[test]
fn failures_are_reported_once_per_distinct_reason() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let outside = svc(
        "x",
        1,
        json!({"spec": {"loadBalancerIP": "172.16.0.1"}}),
        &[],
    );
    let ev = events(&core.upsert(outside.clone()));
    assert_eq!(ev.len(), 1);
    assert!(ev[0].3.contains("outside every pool"), "{}", ev[0].3);
    assert!(core.upsert(outside).is_empty());
    let unknown = svc(
        "x",
        1,
        json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "nope"}}}),
        &[],
    );
    let ev = events(&core.upsert(unknown));
    assert!(
        ev[0].3.contains("pool \"nope\" does not exist"),
        "{}",
        ev[0].3
    );
}

#[test]
fn exhaustion_then_release_lets_the_pending_service_in() {
    let mut core = Core::new();
    core.config_changed(Ok(config(
        "pools:\n  - name: tiny\n    addresses: [10.9.0.1/32]\n",
    )));
    core.synced();
    let a = svc("a", 1, json!({}), &[]);
    let out = core.upsert(a.clone());
    written(&mut core, &out, &a);
    let b = svc("b", 2, json!({}), &[]);
    let ev = events(&core.upsert(b.clone()));
    assert!(ev[0].3.contains("no free IPv4 address"), "{ev:?}");
    // a changes type: released, its status cleared.
    let mut a_cluster_ip = svc(
        "a",
        1,
        json!({"spec": {"type": "ClusterIP"}}),
        &["10.9.0.1"],
    );
    a_cluster_ip.observed.pool = Some("tiny".into());
    let out = core.upsert(a_cluster_ip);
    let ev = events(&out);
    assert_eq!((ev[0].0.as_str(), ev[0].1), ("a", "IPReleased"));
    // The waiting service gets the freed address at once, without an update of its own.
    assert_eq!((ev[1].0.as_str(), ev[1].1), ("b", "IPAllocated"));
    assert_eq!(
        writes(&out),
        [
            ("a".to_string(), vec![]),
            ("b".to_string(), ips(&["10.9.0.1"]))
        ]
    );
    assert!(writes(&core.upsert(b)).is_empty());
}

#[test]
fn pending_write_is_not_repeated_and_a_failed_write_is() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let x = svc("x", 1, json!({}), &[]);
    assert_eq!(writes(&core.upsert(x.clone())).len(), 1);
    // An unrelated update arrives before our write is visible: no second write.
    assert!(writes(&core.upsert(x.clone())).is_empty());
    let key = ServiceKey::new("ns", "x");
    assert_eq!(writes(&core.write_failed(&key)).len(), 1);
    // Someone wipes the status after it was confirmed: written again.
    let out = core.upsert(x.clone());
    assert!(writes(&out).is_empty());
    let rewrite = core.write_failed(&key);
    let confirmed = written(&mut core, &rewrite, &x);
    assert!(writes(&confirmed).is_empty());
    assert_eq!(
        writes(&core.upsert(x)).len(),
        1,
        "a wiped status is written again"
    );
}

#[test]
fn invalid_config_keeps_the_last_good_one_and_warns_once() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let out = core.config_changed(Err("pools[0].addresses: bad".into()));
    let ev = events(&out);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].0.as_str(), ev[0].1, ev[0].2),
        ("<config>", "ConfigInvalid", Severity::Warning)
    );
    assert!(core.config_stale());
    assert!(core
        .config_changed(Err("pools[0].addresses: bad".into()))
        .is_empty());
    // Allocation goes on with the last good pools.
    assert_eq!(
        writes(&core.upsert(svc("x", 1, json!({}), &[]))),
        [("x".to_string(), ips(&["10.0.0.1"]))]
    );
    core.config_changed(Ok(config(TWO_POOLS)));
    assert!(!core.config_stale());
}

#[test]
fn removed_pool_moves_its_services_deterministically() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let mut views = Vec::new();
    for (i, n) in ["p", "q"].iter().enumerate() {
        let v = svc(n, i as u32, json!({}), &[]);
        let out = core.upsert(v.clone());
        written(&mut core, &out, &v);
        views.push(v);
    }
    let out = core.config_changed(Ok(config(
        "pools:\n  - name: b\n    addresses: [10.0.1.0/30]\n",
    )));
    let ev = events(&out);
    assert_eq!(
        ev.iter()
            .filter(|e| e.1 == "IPReleased" && e.2 == Severity::Warning)
            .count(),
        2,
        "{ev:?}"
    );
    assert_eq!(
        ev.iter().filter(|e| e.1 == "IPAllocated").count(),
        2,
        "{ev:?}"
    );
    // Oldest first: p gets the first address of the remaining pool.
    assert_eq!(
        writes(&out),
        [
            ("p".to_string(), ips(&["10.0.1.0"])),
            ("q".to_string(), ips(&["10.0.1.1"]))
        ]
    );
}

#[test]
fn proxy_annotation_sets_ip_mode_and_delete_releases() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    let out = core.upsert(svc(
        "x",
        1,
        json!({"metadata": {"annotations": {"ferrolb.io/forward": "true"}}}),
        &[],
    ));
    let d: Vec<&Desired> = out
        .iter()
        .filter_map(|o| match o {
            Output::Status { desired, .. } => Some(desired),
            _ => None,
        })
        .collect();
    assert_eq!(d[0].ip_mode, "Proxy");
    assert_eq!(d[0].pool.as_deref(), Some("a"));
    let ev = events(&core.delete(&ServiceKey::new("ns", "x")));
    assert_eq!(ev[0].1, "IPReleased");
    assert_eq!(core.allocator().assignments().count(), 0);
}

#[test]
fn other_classes_are_never_touched() {
    let mut core = Core::new();
    core.config_changed(Ok(config(TWO_POOLS)));
    core.synced();
    // Another controller's status stays as it is.
    let out = core.upsert(svc(
        "x",
        1,
        json!({"spec": {"loadBalancerClass": "other.io/lb"}}),
        &["203.0.113.1"],
    ));
    assert!(out.is_empty(), "{out:?}");
}
