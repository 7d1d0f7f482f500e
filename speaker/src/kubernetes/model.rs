//! What this node should do, computed from API objects. Pure: Services,
//! EndpointSlices, Nodes and the live speakers go in; the VIPs to announce
//! (each with the nodes that may announce it) and the forwarder's plan come
//! out. Eligibility follows MetalLB's rules (docs/kubernetes-speaker.md):
//! a VIP needs a ready endpoint; its candidates are the nodes running a live
//! speaker, minus nodes with NetworkUnavailable, minus nodes labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers` (unless told to
//! ignore the label), and with `externalTrafficPolicy: Local` only nodes that
//! hold a ready endpoint. Advertisement node selectors are applied by the
//! announcers (layer 2 election, BGP peers).

use crate::announce::ServiceVips;
use crate::plan::{Plan, PlannedService};
use ferrolb_alloc::Assignment;
use ferrolb_config::{Backend, Config, HealthCheck, Protocol, Service as PlanService, ServicePort};
use ferrolb_ipset::Cidr;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The label that keeps a node out of every load balancer.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The controller's pool annotation (see docs/kubernetes.md).
pub const POOL_ANNOTATION: &str = "ferrolb.io/allocated-from-pool";
/// Services with this annotation set to "true" are served by the forwarder.
pub const FORWARD_ANNOTATION: &str = "ferrolb.io/forward";
/// EndpointSlices name their Service with this label.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which Services the speaker handles: the same rule as the controller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// `spec.loadBalancerClass` handled.
    pub class: String,
    /// Leave Services without a class alone.
    pub ignore_classless: bool,
    /// Announce from nodes labelled [`EXCLUDE_LABEL`] anyway.
    pub ignore_exclude_label: bool,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            class: "ferrolb.io/lb".into(),
            ignore_classless: false,
            ignore_exclude_label: false,
        }
    }
}

/// One endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    ip: IpAddr,
    node: Option<String>,
    /// Port name -> (protocol, number): the slice's, shared by its endpoints.
    ports: std::sync::Arc<[(String, Protocol, u16)]>,
}

/// Why a node cannot announce anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// The node.
    pub node: String,
    /// Why, for the log.
    pub reason: &'static str,
}

/// What the speaker does now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Every handled VIP with its candidate nodes (`ServiceVips::nodes`).
    pub vips: Vec<ServiceVips>,
    /// Services this node forwards (announced by it or not: with ECMP any
    /// candidate receives traffic, in layer 2 the owner does).
    pub plan: Plan,
    /// Nodes out of every election, with the reason.
    pub excluded: Vec<Excluded>,
    /// Services that cannot be handled as they are, with the reason.
    pub problems: Vec<(String, String)>,
}

fn protocol(p: Option<&str>) -> Option<Protocol> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The Service an EndpointSlice belongs to (`namespace/name`) and its
/// ready endpoints. Endpoints that are not ready, or terminating, carry no
/// traffic. `None`: the slice names no Service.
pub fn slice_endpoints(s: &EndpointSlice) -> Option<(String, Vec<Endpoint>)> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let key = format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or(""), svc);
    let ports: std::sync::Arc<[(String, Protocol, u16)]> = s
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                protocol(p.protocol.as_deref())?,
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for e in &s.endpoints {
        let c = e.conditions.as_ref();
        // Per the EndpointSlice API, a missing `ready` means ready.
        let ready = c.and_then(|c| c.ready).unwrap_or(true)
            && !c.and_then(|c| c.terminating).unwrap_or(false);
        if !ready {
            continue;
        }
        for a in &e.addresses {
            if let Ok(ip) = a.parse::<IpAddr>() {
                out.push(Endpoint {
                    ip,
                    node: e.node_name.clone(),
                    ports: std::sync::Arc::clone(&ports),
                });
            }
        }
    }
    Some((key, out))
}

/// The ready endpoints of every Service, by `namespace/name`, slices taken
/// in the order of their names (so the result does not depend on the order
/// a cache lists them in).
fn endpoints(slices: &[impl Borrow<EndpointSlice>]) -> BTreeMap<String, Vec<Endpoint>> {
    let mut sorted: Vec<&EndpointSlice> = slices.iter().map(Borrow::borrow).collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for s in sorted {
        if let Some((key, eps)) = slice_endpoints(s) {
            if !eps.is_empty() {
                out.entry(key).or_default().extend(eps);
            }
        }
    }
    out
}

/// Nodes that may announce at all: live speakers, minus NetworkUnavailable,
/// minus the exclusion label (unless ignored).
pub fn usable_nodes(
    nodes: &[impl Borrow<Node>],
    speakers: &BTreeSet<String>,
    filter: &Filter,
) -> (BTreeSet<String>, Vec<Excluded>) {
    let mut usable = BTreeSet::new();
    let mut excluded = Vec::new();
    for n in nodes.iter().map(Borrow::borrow) {
        let Some(name) = n.metadata.name.clone() else {
            continue;
        };
        if !speakers.contains(&name) {
            continue;
        }
        let unavailable = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
            });
        let labelled = n
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
        if unavailable {
            excluded.push(Excluded {
                node: name,
                reason: "condition NetworkUnavailable is True",
            });
        } else if labelled && !filter.ignore_exclude_label {
            excluded.push(Excluded {
                node: name,
                reason: "labelled node.kubernetes.io/exclude-from-external-load-balancers (start the speakers with --ignore-exclude-lb to announce anyway)",
            });
        } else {
            usable.insert(name);
        }
    }
    (usable, excluded)
}

/// What the speaker reads of a Service, and nothing else: it keeps one for
/// every Service for as long as the Service exists, and 10,000 of them as
/// whole API objects (824 bytes inline before any string, map or list; a
/// one-entry annotation map alone allocates a node for eleven) were the
/// largest part of its memory. A change to anything else (managed fields,
/// `kubectl apply`'s copy of the object, selector, cluster addresses,
/// resourceVersion) gives equal facts, so it re-derives nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `metadata.uid`, for Events.
    pub uid: Option<String>,
    /// `spec.type` is `LoadBalancer`.
    pub load_balancer: bool,
    /// `spec.loadBalancerClass`.
    pub class: Option<String>,
    /// `spec.externalTrafficPolicy` is `Local`.
    pub local: bool,
    /// `status.loadBalancer.ingress[].ip`, those that parse.
    pub vips: Vec<IpAddr>,
    /// The pool annotation the controller writes.
    pub pool: Option<String>,
    /// The forward annotation is `true`.
    pub forward: bool,
    /// `spec.loadBalancerSourceRanges`, blank entries dropped.
    pub source_ranges: Vec<String>,
    /// The source-ranges annotation, read when the field is empty.
    pub source_ranges_annotation: Option<String>,
    /// `spec.ports` with a protocol the forwarder knows: (name, protocol, port).
    pub ports: Vec<(String, Protocol, i32)>,
    /// `metadata.labels`, matched by advertisements' `serviceSelector`.
    pub labels: Arc<crate::announce::Labels>,
}

impl Facts {
    /// The facts of `svc`.
    pub fn of(svc: &Service) -> Facts {
        let ann = svc.metadata.annotations.as_ref();
        let spec = svc.spec.as_ref();
        Facts {
            uid: svc.metadata.uid.clone(),
            load_balancer: spec.and_then(|s| s.type_.as_deref()) == Some("LoadBalancer"),
            class: spec.and_then(|s| s.load_balancer_class.clone()),
            local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
            vips: svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse().ok())
                .collect(),
            pool: ann.and_then(|a| a.get(POOL_ANNOTATION)).cloned(),
            forward: ann
                .and_then(|a| a.get(FORWARD_ANNOTATION))
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            source_ranges: spec
                .and_then(|s| s.load_balancer_source_ranges.as_ref())
                .into_iter()
                .flatten()
                .filter(|r| !r.trim().is_empty())
                .cloned()
                .collect(),
            source_ranges_annotation: ann.and_then(|a| a.get(SOURCE_RANGES_ANNOTATION)).cloned(),
            ports: spec
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.name.clone().unwrap_or_default(),
                        protocol(p.protocol.as_deref())?,
                        p.port,
                    ))
                })
                .collect(),
            labels: Arc::new(svc.metadata.labels.clone().unwrap_or_default()),
        }
    }
}

/// Whether the speaker handles this Service (type and class).
pub fn handled(svc: &Facts, filter: &Filter) -> bool {
    if !svc.load_balancer {
        return false;
    }
    match svc.class.as_deref() {
        Some(c) => c == filter.class,
        None => !filter.ignore_classless,
    }
}

/// Computes everything for node `me`. Takes the objects as they are held
/// (`Arc`s from the watch caches, or plain values), so nothing is copied.
/// `leaving` are the nodes whose speaker Pod is being deleted: they hand
/// their announcements over (make-before-break) but keep forwarding what
/// still reaches them until they stop; a Service only they could announce
/// stays with them.
#[allow(clippy::too_many_arguments)]
pub fn desired(
    me: &str,
    services: &[impl Borrow<Service>],
    slices: &[impl Borrow<EndpointSlice>],
    nodes: &[impl Borrow<Node>],
    speakers: &BTreeSet<String>,
    leaving: &BTreeSet<String>,
    config: &Config,
    filter: &Filter,
) -> Desired {
    let eps = endpoints(slices);
    let (usable, excluded) = usable_nodes(nodes, speakers, filter);
    let mut out = Desired {
        excluded,
        ..Desired::default()
    };
    let mut sorted: Vec<(String, Facts)> = services
        .iter()
        .map(Borrow::borrow)
        .map(|s| {
            let key = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            );
            (key, Facts::of(s))
        })
        .filter(|(_, f)| handled(f, filter))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, svc) in sorted {
        let ready = eps.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let e = entry(me, &key, &svc, ready, &usable, leaving, config);
        if let Some(v) = e.vips {
            out.vips.push(v);
        }
        if let Some(p) = e.planned {
            out.plan.services.push(p);
        }
        if let Some(why) = e.problem {
            out.problems.push((key, why));
        }
    }
    out
}

/// What one Service means for node `me`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// Its VIPs and candidate nodes; `None`: nothing to announce.
    pub vips: Option<ServiceVips>,
    /// What this node forwards for it.
    pub planned: Option<PlannedService>,
    /// Why it cannot be handled as it is.
    pub problem: Option<String>,
}

/// One handled Service's entry, from its ready endpoints and the nodes that
/// may announce: the rule `desired` applies to every Service, and the
/// incremental index to the Services that changed.
pub fn entry(
    me: &str,
    key: &str,
    svc: &Facts,
    ready: &[Endpoint],
    usable: &BTreeSet<String>,
    leaving: &BTreeSet<String>,
    config: &Config,
) -> Entry {
    let mut out = Entry::default();
    let key = key.to_string();
    let vips = svc.vips.clone();
    if vips.is_empty() {
        // Not assigned yet: nothing to announce (the controller's job).
        return out;
    }
    let pool = svc.pool.clone().or_else(|| {
        // Status written by another tool: find the pool holding the address.
        config
            .pools
            .iter()
            .find(|p| vips.iter().all(|ip| p.addresses.contains(*ip)))
            .map(|p| p.name.clone())
    });
    let Some(pool) = pool.filter(|p| config.pool(p).is_some()) else {
        out.problem = Some(format!(
            "{} is in no configured pool; not announced",
            vips.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
        return out;
    };
    let local_only = svc.local;
    let candidates: BTreeSet<String> = if ready.is_empty() {
        BTreeSet::new()
    } else if local_only {
        let with_endpoint: BTreeSet<String> = ready.iter().filter_map(|e| e.node.clone()).collect();
        usable.intersection(&with_endpoint).cloned().collect()
    } else {
        usable.clone()
    };
    let forward = svc.forward;
    let staying: BTreeSet<String> = candidates.difference(leaving).cloned().collect();
    out.vips = Some(ServiceVips {
        key: key.clone(),
        pool: pool.clone(),
        vips: vips.clone(),
        healthy: true,
        nodes: Some(if staying.is_empty() {
            candidates.clone()
        } else {
            staying
        }),
        labels: Arc::clone(&svc.labels),
    });
    if !forward || !candidates.contains(me) {
        return out;
    }
    match forward_service(&key, svc, ready, local_only.then_some(me)) {
        Ok(service) => {
            out.planned = Some(PlannedService {
                service,
                assignment: Assignment {
                    pool: pool.as_str().into(),
                    ips: vips,
                },
            })
        }
        Err(why) => out.problem = Some(why),
    }
    out
}

/// kube-proxy's annotation for source ranges, used when the field is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// One source range as the API server accepts it (`ParseCIDRSloppy`:
/// surrounding spaces, host bits set) and kube-proxy applies it (the
/// network the address is in: `10.0.0.1/8` is `10.0.0.0/8`).
pub fn lenient_cidr(text: &str) -> Option<Cidr> {
    let (addr, prefix) = text.trim().split_once('/')?;
    let addr: IpAddr = addr.trim().parse().ok()?;
    let prefix: u8 = prefix.trim().parse().ok()?;
    Cidr::containing(addr, prefix)
}

/// The Service's allowed client ranges: `spec.loadBalancerSourceRanges`,
/// or, when that is empty, the `service.beta.kubernetes.io/load-balancer-source-ranges`
/// annotation (comma-separated), as kube-proxy reads them. A range that
/// cannot be read is an error: it must not silently open the Service to everyone.
pub fn source_ranges(field: &[String], annotation: Option<&str>) -> Result<Vec<Cidr>, String> {
    let field: Vec<String> = field
        .iter()
        .filter(|r| !r.trim().is_empty())
        .cloned()
        .collect();
    let (ranges, whence): (Vec<String>, &str) = if !field.is_empty() {
        (field, "loadBalancerSourceRanges")
    } else if let Some(a) = annotation {
        (
            a.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
            SOURCE_RANGES_ANNOTATION,
        )
    } else {
        (Vec::new(), "")
    };
    ranges
        .iter()
        .map(|r| {
            lenient_cidr(r).ok_or_else(|| {
                format!("{whence} entry {r:?} is not an address range (ADDRESS/PREFIX); not forwarded until it is fixed")
            })
        })
        .collect()
}

/// The forwarder's view of a Service: each port to the ready endpoints'
/// target ports (only this node's endpoints with `externalTrafficPolicy: Local`).
fn forward_service(
    key: &str,
    svc: &Facts,
    ready: &[Endpoint],
    only_node: Option<&str>,
) -> Result<PlanService, String> {
    let source_ranges = source_ranges(&svc.source_ranges, svc.source_ranges_annotation.as_deref())?;
    let mut ports = Vec::new();
    for (name, proto, port) in &svc.ports {
        let proto = *proto;
        if proto == Protocol::Sctp {
            continue;
        }
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        let mut backends: Vec<Backend> = ready
            .iter()
            .filter(|e| only_node.is_none_or(|n| e.node.as_deref() == Some(n)))
            .filter_map(|e| {
                let (_, _, target) = e
                    .ports
                    .iter()
                    .find(|(n, pr, _)| n == name && *pr == proto)?;
                Some(Backend {
                    address: SocketAddr::new(e.ip, *target),
                    weight: 1,
                })
            })
            .collect();
        backends.sort_by_key(|b| b.address);
        backends.dedup();
        ports.push(ServicePort {
            port,
            protocol: proto,
            backends,
            algorithm: Default::default(),
            proxy_protocol: None,
            health_check: Some(HealthCheck::default()),
            mode: None,
        });
    }
    Ok(PlanService {
        name: key.to_string(),
        ip: None,
        pool: None,
        source_ranges,
        ports,
        max_connections: None,
        labels: (*svc.labels).clone(),
    })
}

#[cfg(test)]
mod source_range_tests {
    use super::*;

    fn spec(ranges: &[&str]) -> Vec<String> {
        ranges.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn ranges_as_the_api_server_accepts_and_kube_proxy_reads_them() {
        let ann = |v: &'static str| Some(v);
        let none = None;
        let show = |r: Result<Vec<Cidr>, String>| {
            r.map(|v| v.iter().map(|c| c.to_string()).collect::<Vec<_>>())
        };
        // Sloppy forms: spaces, host bits.
        assert_eq!(
            show(source_ranges(
                &spec(&[" 10.0.0.1/8 ", "2001:db8::1/32"]),
                none
            )),
            Ok(vec!["10.0.0.0/8".into(), "2001:db8::/32".into()])
        );
        // The annotation when the field is empty; the field wins otherwise.
        assert_eq!(
            show(source_ranges(
                &spec(&[]),
                ann(" 192.0.2.0/24 ,198.51.100.7/32,")
            )),
            Ok(vec!["192.0.2.0/24".into(), "198.51.100.7/32".into()])
        );
        assert_eq!(
            show(source_ranges(&spec(&["10.0.0.0/8"]), ann("192.0.2.0/24"))),
            Ok(vec!["10.0.0.0/8".into()])
        );
        // Nothing: open to all (an empty list).
        assert_eq!(show(source_ranges(&spec(&[]), none)), Ok(vec![]));
        // Unreadable entries are errors, never an open Service.
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "2001:db8::/129"] {
            assert!(source_ranges(&spec(&[bad]), none).is_err(), "{bad}");
            assert!(source_ranges(&spec(&[]), Some(bad)).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod leaving_tests {
    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    /// A node whose speaker Pod is being deleted gives up its announcements
    /// (so the next owner takes them before it stops) and still forwards;
    /// a Service only it could announce stays with it.
    #[test]
    fn a_leaving_node_hands_over_its_announcements_but_keeps_forwarding() {
        let config = Config::from_yaml(
            "pools: [{name: vips, addresses: [192.0.2.100-192.0.2.110]}]\nl2: [{pools: [vips]}]\n",
        )
        .unwrap();
        let svc = |name: &str, ip: &str, local: bool| -> Service {
            obj(serde_json::json!({
                "metadata": {"name": name, "namespace": "shop",
                             "annotations": {"ferrolb.io/forward": "true"}},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": 9000, "protocol": "TCP"}],
                         "externalTrafficPolicy": if local { "Local" } else { "Cluster" }},
                "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
            }))
        };
        let slice = |name: &str, node: &str| -> EndpointSlice {
            obj(serde_json::json!({
                "metadata": {"name": format!("{name}-1"), "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.1.0.1"], "nodeName": node, "conditions": {"ready": true}}],
                "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}]
            }))
        };
        let node = |n: &str| -> Node { obj(serde_json::json!({"metadata": {"name": n}})) };
        let services = [
            svc("web", "192.0.2.100", false),
            svc("only", "192.0.2.101", true),
        ];
        let slices = [slice("web", "node2"), slice("only", "node1")];
        let nodes = [node("node1"), node("node2"), node("node3")];
        let speakers: BTreeSet<String> = ["node1", "node2", "node3"].map(String::from).into();
        let leaving: BTreeSet<String> = ["node1".to_string()].into();
        let run = |leaving: &BTreeSet<String>| {
            desired(
                "node1",
                &services,
                &slices,
                &nodes,
                &speakers,
                leaving,
                &config,
                &Filter::default(),
            )
        };
        let d = run(&leaving);
        let nodes_of = |key: &str| {
            d.vips
                .iter()
                .find(|v| v.key == key)
                .unwrap()
                .nodes
                .clone()
                .unwrap()
        };
        assert_eq!(
            nodes_of("shop/web"),
            ["node2", "node3"].map(String::from).into()
        );
        assert_eq!(
            nodes_of("shop/only"),
            ["node1".to_string()].into(),
            "nobody else can: it stays"
        );
        let forwarded: Vec<&str> = d
            .plan
            .services
            .iter()
            .map(|s| s.service.name.as_str())
            .collect();
        assert_eq!(
            forwarded,
            ["shop/only", "shop/web"],
            "node1 forwards until it stops"
        );
        let d = run(&BTreeSet::new());
        assert!(d
            .vips
            .iter()
            .find(|v| v.key == "shop/web")
            .unwrap()
            .eligible("node1"));
    }
}

#[cfg(test)]
mod facts_tests {
    use super::*;
    use serde_json::{json, Value};

    /// A Service as `kubectl apply` and the API server leave it: managed
    /// fields, the last-applied copy, selector, cluster addresses, owners.
    fn full() -> Value {
        let spec = json!({
            "type": "LoadBalancer",
            "loadBalancerClass": "ferrolb.io/lb",
            "selector": {"app": "web", "tier": "front"},
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
            "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "loadBalancerSourceRanges": ["192.0.2.0/24", " "],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
                      {"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "odd", "port": 9, "protocol": "QUIC"}]
        });
        let applied = json!({"kind": "Service", "spec": spec}).to_string();
        json!({
            "metadata": {
                "namespace": "shop", "name": "web", "uid": "u-1", "resourceVersion": "41",
                "labels": {"app": "web"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": applied,
                    "ferrolb.io/forward": " True ",
                    "ferrolb.io/allocated-from-pool": "vips",
                    "service.beta.kubernetes.io/load-balancer-source-ranges": "198.51.100.0/24"
                },
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-2"}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {"f:ports": {}}}}]
            },
            "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10", "ipMode": "Proxy"}, {"hostname": "lb.example"}]},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "x", "message": "y",
                                       "lastTransitionTime": "2026-12-02T00:00:00Z"}]}
        })
    }

    fn facts(v: &Value) -> Facts {
        Facts::of(&serde_json::from_value(v.clone()).expect("valid Service"))
    }

    /// Sets the field at `path` (object keys, or array indexes) to `to`.
    fn with(mut v: Value, path: &[&str], to: Value) -> Value {
        let mut at = &mut v;
        for p in path {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        *at = to;
        v
    }

    #[test]
    fn the_facts_of_a_kubectl_applied_service() {
        assert_eq!(
            facts(&full()),
            Facts {
                uid: Some("u-1".into()),
                load_balancer: true,
                class: Some("ferrolb.io/lb".into()),
                local: true,
                vips: vec!["203.0.113.10".parse().expect("ip")],
                pool: Some("vips".into()),
                forward: true,
                source_ranges: vec!["192.0.2.0/24".into()],
                source_ranges_annotation: Some("198.51.100.0/24".into()),
                ports: vec![
                    ("http".into(), Protocol::Tcp, 80),
                    ("dns".into(), Protocol::Udp, 53)
                ],
                labels: Arc::new([("app".to_string(), "web".to_string())].into()),
            }
        );
    }

    #[test]
    fn fields_the_speaker_never_reads_give_equal_facts() {
        let base = facts(&full());
        for (path, to) in [
            (&["metadata", "resourceVersion"][..], json!("42")),
            (&["metadata", "managedFields"], json!([])),
            (
                &[
                    "metadata",
                    "annotations",
                    "kubectl.kubernetes.io/last-applied-configuration",
                ],
                json!("{}"),
            ),
            (&["metadata", "ownerReferences"], json!([])),
            (&["spec", "selector"], json!({"app": "other"})),
            (&["spec", "clusterIPs"], json!(["10.96.0.11"])),
            (&["spec", "sessionAffinity"], json!("None")),
            (&["spec", "ports", "0", "nodePort"], json!(30081)),
            (&["status", "conditions"], json!([])),
        ] {
            assert_eq!(facts(&with(full(), path, to)), base, "{path:?}");
        }
    }

    #[test]
    fn every_field_the_speaker_reads_changes_the_facts() {
        let base = facts(&full());
        for (path, to) in [
            (&["metadata", "uid"][..], json!("u-9")),
            // Advertisements' serviceSelector reads them.
            (&["metadata", "labels"], json!({"app": "web2"})),
            (&["spec", "type"], json!("NodePort")),
            (&["spec", "loadBalancerClass"], json!("other")),
            (&["spec", "externalTrafficPolicy"], json!("Cluster")),
            (
                &["status", "loadBalancer", "ingress", "0", "ip"],
                json!("203.0.113.11"),
            ),
            (
                &["metadata", "annotations", "ferrolb.io/allocated-from-pool"],
                json!("other"),
            ),
            (
                &["metadata", "annotations", "ferrolb.io/forward"],
                json!("false"),
            ),
            (
                &[
                    "metadata",
                    "annotations",
                    "service.beta.kubernetes.io/load-balancer-source-ranges",
                ],
                json!("10.0.0.0/8"),
            ),
            (&["spec", "loadBalancerSourceRanges"], json!(["10.0.0.0/8"])),
            (&["spec", "ports", "0", "name"], json!("https")),
            (&["spec", "ports", "0", "port"], json!(443)),
            (&["spec", "ports", "1", "protocol"], json!("TCP")),
        ] {
            assert_ne!(
                facts(&with(full(), path, to.clone())),
                base,
                "{path:?} = {to}"
            );
        }
    }
}
