//! Reads what a Service asks for: whether ferrolb handles it, the
//! allocator request built from its spec and annotations, and what its
//! status says it has. Pure: no client, no clock.

use ferrolb_alloc::{FamilyPolicy, Port, Request, ServiceKey};
use ferrolb_config::Protocol;
use ferrolb_ipset::Family;
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The load-balancer class ferrolb answers to by default.
pub const DEFAULT_CLASS: &str = "ferrolb.io/lb";
/// Annotation written by the controller: the pool the addresses came from.
pub const POOL_ANNOTATION: &str = "ferrolb.io/allocated-from-pool";
/// Annotation asking the speaker's forwarder to serve the service (ipMode Proxy).
pub const FORWARD_ANNOTATION: &str = "ferrolb.io/forward";

/// Annotation prefixes accepted, in precedence order: ferrolb's own, then
/// MetalLB's current and legacy names so users can migrate without edits.
const PREFIXES: [&str; 3] = ["ferrolb.io/", "metallb.io/", "metallb.universe.tf/"];

/// Which Services the controller handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFilter {
    /// `spec.loadBalancerClass` value handled.
    pub class: String,
    /// Whether Services without a class are left to another controller.
    pub ignore_classless: bool,
}

impl Default for ClassFilter {
    fn default() -> ClassFilter {
        ClassFilter {
            class: DEFAULT_CLASS.to_string(),
            ignore_classless: false,
        }
    }
}

/// What the controller makes of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handling {
    /// Not ours: another type, or another load-balancer class.
    Ignored(&'static str),
    /// Ours, with this request.
    Managed {
        /// The allocator request.
        request: Box<Request>,
        /// `ferrolb.io/forward: "true"`: status says `ipMode: Proxy`.
        proxy: bool,
    },
    /// Ours, but its annotations or spec cannot be turned into a request.
    Invalid {
        /// What to fix, for the AllocationFailed Event.
        reason: String,
        /// `ferrolb.io/forward: "true"`.
        proxy: bool,
    },
}

/// What a Service's status and annotations say it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `status.loadBalancer.ingress[].ip`, in order; unparsable entries are skipped.
    pub ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ipMode`, in the same order.
    pub ip_modes: Vec<Option<String>>,
    /// Entries in `ingress` that are not plain IPs (hostnames, garbage).
    pub foreign_entries: usize,
    /// The `ferrolb.io/allocated-from-pool` annotation.
    pub pool: Option<String>,
}

/// A Service reduced to what the controller needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: ServiceKey,
    /// `metadata.uid`, for Event references.
    pub uid: String,
    /// What to do with it.
    pub handling: Handling,
    /// What it holds now.
    pub observed: Observed,
}

fn annotation<'a>(
    ann: &'a BTreeMap<String, String>,
    suffix: &str,
) -> Result<Option<(&'a str, String)>, String> {
    let mut found: Option<(String, &'a str)> = None;
    for prefix in PREFIXES {
        let key = format!("{prefix}{suffix}");
        if let Some(v) = ann.get(&key) {
            let v = v.trim();
            match &found {
                Some((first, fv)) if *fv != v => {
                    return Err(format!(
                        "annotations {first} ({fv:?}) and {key} ({v:?}) disagree; keep one of them"
                    ));
                }
                Some(_) => {}
                None => found = Some((key, v)),
            }
        }
    }
    Ok(found.map(|(k, v)| (v, k)))
}

fn parse_ips(text: &str, source: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| format!("{source}: {part:?} is not an IP address"))?;
        if ips.iter().any(|i: &IpAddr| i.is_ipv4() == ip.is_ipv4()) {
            return Err(format!(
                "{source}: at most one address per family (got two {} addresses)",
                Family::of(ip)
            ));
        }
        ips.push(ip);
    }
    Ok(ips)
}

fn created_seconds(svc: &Service) -> i64 {
    svc.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX)
}

/// Builds the allocator request of a Service that ferrolb handles.
fn request(svc: &Service, key: ServiceKey) -> Result<Request, String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let ann = svc.metadata.annotations.as_ref().unwrap_or(&empty);
    let mut req = Request::new(key);
    req.created = created_seconds(svc);
    req.labels = svc.metadata.labels.clone().unwrap_or_default();

    // The API server always fills ipFamilies (for the cluster's families);
    // only an object from elsewhere (a test, an old server) lacks it.
    req.families_set_by_cluster = spec.ip_families.as_ref().is_some_and(|f| !f.is_empty());
    for fam in spec.ip_families.iter().flatten() {
        req.families.push(match fam.as_str() {
            "IPv4" => Family::V4,
            "IPv6" => Family::V6,
            other => return Err(format!("spec.ipFamilies: unknown family {other:?}")),
        });
    }
    req.policy = match spec.ip_family_policy.as_deref() {
        None | Some("SingleStack") => FamilyPolicy::SingleStack,
        Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
        Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
        Some(other) => return Err(format!("spec.ipFamilyPolicy: unknown policy {other:?}")),
    };

    let from_annotation = annotation(ann, "loadBalancerIPs")?;
    let spec_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    req.requested_ips = match (&from_annotation, spec_ip) {
        (Some((_, key)), Some(_)) => {
            return Err(format!("both {key} and spec.loadBalancerIP are set; keep only the annotation (spec.loadBalancerIP is deprecated)"))
        }
        (Some((v, key)), None) => parse_ips(v, key)?,
        (None, Some(v)) => parse_ips(v, "spec.loadBalancerIP")?,
        (None, None) => Vec::new(),
    };
    if !req.requested_ips.is_empty() && req.families.is_empty() {
        // A Service created without ipFamilies asks for whatever it requested.
        req.families = req.requested_ips.iter().map(|ip| Family::of(*ip)).collect();
    }
    req.requested_pool = annotation(ann, "address-pool")?
        .map(|(v, _)| v.to_string())
        .filter(|v| !v.is_empty());
    req.sharing_key = annotation(ann, "allow-shared-ip")?
        .map(|(v, _)| v.to_string())
        .filter(|v| !v.is_empty());

    for p in spec.ports.iter().flatten() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Err(format!("spec.ports: unknown protocol {other:?}")),
        };
        let port = u16::try_from(p.port)
            .map_err(|_| format!("spec.ports: port {} out of range", p.port))?;
        req.ports.push(Port { protocol, port });
    }
    if spec.external_traffic_policy.as_deref() == Some("Local") {
        // Services sharing an IP with policy Local must land on the same nodes: same selector.
        let sel: Vec<String> = spec
            .selector
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        req.backend_key = Some(sel.join(","));
    }
    Ok(req)
}

fn observed(svc: &Service) -> Observed {
    let mut out = Observed {
        pool: svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POOL_ANNOTATION))
            .cloned(),
        ..Observed::default()
    };
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for entry in ingress.into_iter().flatten() {
        match entry.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
            Some(ip) => {
                out.ips.push(ip);
                out.ip_modes.push(entry.ip_mode.clone());
            }
            None => out.foreign_entries += 1,
        }
    }
    out
}

/// Reduces a Service to a [`ServiceView`].
pub fn view(svc: &Service, filter: &ClassFilter) -> ServiceView {
    let key = ServiceKey::new(
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    let spec = svc.spec.as_ref();
    let proxy = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FORWARD_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let handling = if spec.and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        Handling::Ignored("not of type LoadBalancer")
    } else {
        match spec.and_then(|s| s.load_balancer_class.as_deref()) {
            Some(c) if c != filter.class => Handling::Ignored("another loadBalancerClass"),
            None if filter.ignore_classless => {
                Handling::Ignored("no loadBalancerClass (--ignore-classless)")
            }
            _ => match request(svc, key.clone()) {
                Ok(request) => Handling::Managed {
                    request: Box::new(request),
                    proxy,
                },
                Err(reason) => Handling::Invalid { reason, proxy },
            },
        }
    };
    ServiceView {
        key,
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        handling,
        observed: observed(svc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        let mut base = json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}
        });
        merge(&mut base, &v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        } else {
            *a = b.clone();
        }
    }

    fn managed(s: &Service) -> Request {
        match view(s, &ClassFilter::default()).handling {
            Handling::Managed { request, .. } => *request,
            other => panic!("expected managed, got {other:?}"),
        }
    }

    fn invalid(s: &Service) -> String {
        match view(s, &ClassFilter::default()).handling {
            Handling::Invalid { reason, .. } => reason,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn classes_and_types() {
        let f = ClassFilter::default();
        assert!(matches!(
            view(&svc(json!({"spec": {"type": "ClusterIP"}})), &f).handling,
            Handling::Ignored(_)
        ));
        assert!(matches!(
            view(
                &svc(json!({"spec": {"loadBalancerClass": "other.io/lb"}})),
                &f
            )
            .handling,
            Handling::Ignored(_)
        ));
        assert!(matches!(
            view(
                &svc(json!({"spec": {"loadBalancerClass": "ferrolb.io/lb"}})),
                &f
            )
            .handling,
            Handling::Managed { .. }
        ));
        let strict = ClassFilter {
            ignore_classless: true,
            ..f.clone()
        };
        assert!(matches!(
            view(&svc(json!({})), &strict).handling,
            Handling::Ignored(_)
        ));
        assert!(matches!(
            view(
                &svc(json!({"spec": {"loadBalancerClass": "ferrolb.io/lb"}})),
                &strict
            )
            .handling,
            Handling::Managed { .. }
        ));
    }

    #[test]
    fn request_fields() {
        let r = managed(&svc(json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {
                "metallb.universe.tf/loadBalancerIPs": "192.0.2.10, 2001:db8::10",
                "metallb.io/address-pool": "edge",
                "ferrolb.io/allow-shared-ip": "k1"}},
            "spec": {"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                     "externalTrafficPolicy": "Local", "selector": {"b": "2", "a": "1"}}
        })));
        assert_eq!(r.key, ServiceKey::new("shop", "web"));
        assert_eq!(r.created, 1_767_225_600);
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        assert_eq!(r.policy, FamilyPolicy::RequireDualStack);
        assert_eq!(
            r.requested_ips,
            vec![
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "2001:db8::10".parse().unwrap()
            ]
        );
        assert_eq!(r.requested_pool.as_deref(), Some("edge"));
        assert_eq!(r.sharing_key.as_deref(), Some("k1"));
        assert_eq!(
            r.ports,
            vec![
                Port {
                    protocol: Protocol::Tcp,
                    port: 80
                },
                Port {
                    protocol: Protocol::Udp,
                    port: 53
                }
            ]
        );
        assert_eq!(r.backend_key.as_deref(), Some("a=1,b=2"));
        assert_eq!(r.labels["app"], "web");

        let r = managed(&svc(json!({"spec": {"loadBalancerIP": "2001:db8::5"}})));
        assert_eq!(
            r.families,
            vec![Family::V6],
            "a requested IPv6 address without ipFamilies asks for IPv6"
        );
        let r = managed(&svc(json!({})));
        assert!(r.requested_ips.is_empty() && r.families.is_empty() && r.backend_key.is_none());
    }

    #[test]
    fn invalid_requests_say_what_to_fix() {
        assert!(invalid(&svc(
            json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "10.0.0.300"}}})
        ))
        .contains("not an IP address"));
        assert!(invalid(&svc(json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "10.0.0.1,10.0.0.2"}}}))).contains("one address per family"));
        assert!(invalid(&svc(json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "a", "metallb.io/address-pool": "b"}}}))).contains("disagree"));
        assert!(invalid(&svc(json!({"metadata": {"annotations": {"ferrolb.io/loadBalancerIPs": "10.0.0.1"}}, "spec": {"loadBalancerIP": "10.0.0.1"}}))).contains("deprecated"));
        assert!(
            invalid(&svc(json!({"spec": {"ipFamilyPolicy": "Sometimes"}})))
                .contains("ipFamilyPolicy")
        );
        // The same value under two prefixes is fine.
        managed(&svc(
            json!({"metadata": {"annotations": {"ferrolb.io/address-pool": "a", "metallb.io/address-pool": "a"}}}),
        ));
    }

    #[test]
    fn observed_status() {
        let v = view(
            &svc(json!({
                "metadata": {"annotations": {"ferrolb.io/allocated-from-pool": "p", "ferrolb.io/forward": "True"}},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}, {"hostname": "x.example"}, {"ip": "junk"}]}}
            })),
            &ClassFilter::default(),
        );
        assert_eq!(v.observed.ips, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(v.observed.ip_modes, vec![Some("VIP".to_string())]);
        assert_eq!(v.observed.foreign_entries, 2);
        assert_eq!(v.observed.pool.as_deref(), Some("p"));
        assert!(matches!(v.handling, Handling::Managed { proxy: true, .. }));
    }
}
