//! Kubernetes mode: the speaker learns from the API what to announce and
//! where to forward. `model` holds the rules and `index` applies them one
//! change at a time (both pure); the runner here watches the API (Services
//! and EndpointSlices one event at a time; Nodes, the ConfigMap and the
//! speaker Pods as wholes) and drives the same announcers and forwarder as
//! standalone mode.
//!
//! The API is only an input: membership heartbeats, elections, BGP sessions
//! and the forwarder keep running on the last state seen if the API server
//! goes away.

pub mod index;
pub mod model;
pub mod report;
pub mod roles;

use crate::announce::{vip_list, Announcer};
use crate::announcers::{Announcers, HostSettings, NodeView};
use crate::forwarder::Forwarder;
use crate::metrics::{Metrics, ResultLabels};
use anyhow::Context;
use ferrolb_config::{Config, Member};
use futures::StreamExt;
use index::{Index, Kind, Recompute};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use model::Filter;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How Kubernetes mode runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (from the downward API).
    pub node: String,
    /// A kubeconfig; default: KUBECONFIG or ~/.kube/config, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the speaker Pods, Secrets and NodeAnnouncements.
    pub namespace: String,
    /// The configuration ConfigMap.
    pub config: ferrolb_kube::ConfigSource,
    /// Label selector of the speaker Pods (the members of layer 2 failover).
    pub speaker_selector: String,
    /// UDP port of the membership heartbeats.
    pub member_port: u16,
    /// How long a VIP no Service uses keeps its local route.
    pub route_linger: std::time::Duration,
    /// How long a stopping speaker keeps forwarding after handing over.
    pub handover_delay: std::time::Duration,
    /// Heartbeat keys (an optional Secret volume): absent means unsigned.
    pub member_keys_file: Option<PathBuf>,
    /// Which Services, and which nodes.
    pub filter: Filter,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_address: SocketAddr,
    /// TLS and bearer tokens for that endpoint.
    pub metrics_access: ferrolb_ops::Access,
    /// Incremental (default), or every Service on every change (the
    /// benchmark's reference).
    pub recompute: Recompute,
}

/// One event of the Service and EndpointSlice watches.
enum ApiEvent {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// Watches `api` and forwards every event, in order: the index needs each
/// object as it changes, not a snapshot of all of them.
fn watch_events<K>(
    api: Api<K>,
    tx: tokio::sync::mpsc::UnboundedSender<ApiEvent>,
    wrap: fn(watcher::Event<K>) -> ApiEvent,
) where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).is_err() {
                        return;
                    }
                }
                // The backoff retries; the index keeps the last state meanwhile.
                Err(e) => tracing::warn!(error = %e, "watch error; retrying"),
            }
        }
    });
}

/// Feeds one watch event to the index; `listed` records the first full lists.
fn feed(index: &mut Index, ev: ApiEvent, listed: &mut [bool; 2]) {
    match ev {
        ApiEvent::Service(e) => match *e {
            watcher::Event::Apply(mut s) | watcher::Event::InitApply(mut s) => {
                // Kept for as long as the Service exists: without the field
                // ownership records, which the speaker never reads (a third
                // of a typical object).
                s.metadata.managed_fields = None;
                index.apply_service(Arc::new(s))
            }
            watcher::Event::Delete(s) => index.delete_service(&s),
            watcher::Event::Init => index.relist(Kind::Service),
            watcher::Event::InitDone => {
                index.relist_done(Kind::Service);
                listed[0] = true;
            }
        },
        ApiEvent::Slice(e) => match *e {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => index.apply_slice(&s),
            watcher::Event::Delete(s) => index.delete_slice(&s),
            watcher::Event::Init => index.relist(Kind::Slice),
            watcher::Event::InitDone => {
                index.relist_done(Kind::Slice);
                listed[1] = true;
            }
        },
    }
}

/// A reflector kept current by its own task; every change pokes `changed`.
fn reflect<K>(api: Api<K>, config: watcher::Config, changed: watch::Sender<u64>) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => {
                    changed.send_modify(|n| *n += 1);
                }
                // The backoff retries; the last state stays in the store meanwhile.
                Err(e) => tracing::warn!(error = %e, "watch error; retrying"),
            }
        }
    });
    reader
}

fn node_ipv4(node: &Node) -> Option<std::net::Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The speaker Pods as members: node name, host IP and the node's labels.
fn members(pods: &[Arc<Pod>], nodes: &[Arc<Node>], port: u16) -> Vec<Member> {
    let labels: BTreeMap<&str, BTreeMap<String, String>> = nodes
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.as_deref()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let mut out: BTreeMap<String, Member> = BTreeMap::new();
    for p in pods {
        let (Some(node), Some(status)) = (
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.status.as_ref(),
        ) else {
            continue;
        };
        if status.phase.as_deref() != Some("Running") {
            continue;
        }
        let Some(ip) = status
            .host_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let mut l = labels.get(node.as_str()).cloned().unwrap_or_default();
        l.insert("kubernetes.io/hostname".into(), node.clone());
        out.insert(
            node.clone(),
            Member {
                name: node,
                address: SocketAddr::new(ip, port),
                labels: l,
            },
        );
    }
    out.into_values().collect()
}

/// Nodes whose speaker Pods are all being deleted (`deletionTimestamp`
/// set): they are leaving, and hand their announcements over while they
/// still run. A node with a replacement Pod already is not leaving.
fn leaving_nodes(pods: &[Arc<Pod>]) -> BTreeSet<String> {
    let mut going = BTreeSet::new();
    let mut staying = BTreeSet::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            going.insert(node);
        } else {
            staying.insert(node);
        }
    }
    going.difference(&staying).cloned().collect()
}

/// The configuration with every `passwordSecret` replaced by the Secret's
/// value, read from the API in the speaker's namespace. A Secret that cannot
/// be read is logged (never its content) and left in place: that peer then
/// gets no session, since a key nobody knows is set on its sockets.
async fn with_secret_passwords(client: &kube::Client, namespace: &str, cfg: &Config) -> Config {
    use ferrolb_config::PeerPassword;
    let mut cfg = cfg.clone();
    let Some(bgp) = cfg.bgp.as_mut() else {
        return cfg;
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    for p in &mut bgp.peers {
        let Some(PeerPassword::Secret {
            name,
            key,
            namespace: wanted,
        }) = p.password.clone()
        else {
            continue;
        };
        if wanted.as_deref().is_some_and(|w| w != namespace) {
            tracing::error!(peer = %p.name, secret = %name, "passwordSecret must be in the speaker's namespace {namespace:?}; this peer gets no session");
            continue;
        }
        let value = match api.get(&name).await {
            Ok(secret) => secret
                .data
                .as_ref()
                .and_then(|d| d.get(&key))
                .map(|v| String::from_utf8_lossy(&v.0).trim_end().to_string())
                .ok_or_else(|| format!("the Secret has no key {key:?}")),
            Err(e) => Err(e.to_string()),
        };
        match value {
            Ok(v) if !v.is_empty() && v.len() <= ferrolb_sys::TCP_MD5_MAX_KEY => {
                p.password = Some(PeerPassword::Inline(v));
            }
            Ok(_) => {
                tracing::error!(peer = %p.name, secret = %format!("{namespace}/{name}"), key = %key, "the password must be 1-80 bytes (the TCP-MD5 key limit); this peer gets no session")
            }
            Err(e) => {
                tracing::error!(peer = %p.name, secret = %format!("{namespace}/{name}"), key = %key, error = %e, "cannot read the BGP password Secret; this peer gets no session (the speaker needs `get` on Secrets in its namespace, deploy/speaker.yaml)")
            }
        }
    }
    cfg
}

/// How long one (Service, MAC) conflict stays one Event: an attack that goes
/// on is one Warning, not one a second.
const CONFLICT_EVENT_EVERY: Duration = Duration::from_secs(600);
/// Conflicts remembered at most (a flood of forged MACs cannot grow it).
const CONFLICT_EVENTS_KEPT: usize = 1024;

/// Which conflicts already had their Warning Event.
#[derive(Default)]
struct ConflictEvents {
    last: BTreeMap<(String, ferrolb_l2::wire::Mac), std::time::Instant>,
}

impl ConflictEvents {
    /// Whether this conflict deserves an Event now (and remembers it).
    fn first(&mut self, key: &str, mac: ferrolb_l2::wire::Mac, now: std::time::Instant) -> bool {
        self.last
            .retain(|_, t| now.duration_since(*t) < CONFLICT_EVENT_EVERY);
        let k = (key.to_string(), mac);
        if self.last.contains_key(&k) || self.last.len() >= CONFLICT_EVENTS_KEPT {
            return false;
        }
        self.last.insert(k, now);
        true
    }
}

/// An Event about Service `key` (`namespace/name`); the uid lets `kubectl
/// describe` find it.
fn service_event(
    key: &str,
    uid: Option<String>,
    reason: &str,
    action: &str,
    note: String,
) -> ferrolb_kube::EventSpec {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    ferrolb_kube::EventSpec {
        regarding: ferrolb_kube::service_ref(ns, name, uid),
        warning: false,
        reason: reason.into(),
        action: action.into(),
        note,
    }
}

/// Runs until SIGTERM or SIGINT, then withdraws and drains.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let render = Arc::clone(&metrics);
    ferrolb_ops::start_with(
        opts.metrics_address,
        Box::new(move || render.encode()),
        Arc::clone(&ready),
        opts.metrics_access.clone(),
    )
    .await?;
    let client = ferrolb_kube::client(
        opts.kubeconfig.as_deref(),
        concat!("ferrolb-speaker/", env!("CARGO_PKG_VERSION")),
    )
    .await?;
    let events = ferrolb_kube::Events::start(client.clone(), "ferrolb-speaker", opts.node.clone());
    let counted = Arc::clone(&metrics);
    let report_tx = report::spawn(
        client.clone(),
        opts.namespace.clone(),
        opts.node.clone(),
        Box::new(move |ok| {
            counted
                .announcement_writes
                .get_or_create(&ResultLabels {
                    result: if ok { "ok" } else { "error" }.into(),
                })
                .inc();
        }),
    );
    let (changed, mut changes) = watch::channel(0u64);
    let (api_tx, mut api_rx) = tokio::sync::mpsc::unbounded_channel::<ApiEvent>();
    watch_events(Api::<Service>::all(client.clone()), api_tx.clone(), |e| {
        ApiEvent::Service(Box::new(e))
    });
    watch_events(Api::<EndpointSlice>::all(client.clone()), api_tx, |e| {
        ApiEvent::Slice(Box::new(e))
    });
    let nodes = reflect(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let pods = reflect(
        Api::<Pod>::namespaced(client.clone(), &opts.namespace),
        watcher::Config::default().labels(&opts.speaker_selector),
        changed.clone(),
    );
    let config_maps = reflect(
        Api::<ConfigMap>::namespaced(client.clone(), &opts.config.namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", opts.config.name)),
        changed.clone(),
    );
    tracing::info!(node = %opts.node, namespace = %opts.namespace, "waiting for the first list of every watched resource");
    for (what, ready) in [
        ("Nodes", nodes.wait_until_ready().await),
        ("speaker Pods", pods.wait_until_ready().await),
        ("ConfigMap", config_maps.wait_until_ready().await),
    ] {
        ready.map_err(|e| anyhow::anyhow!("cannot list {what}: {e}"))?;
    }
    let mut index = Index::new(&opts.node, opts.filter.clone(), opts.recompute);
    let mut listed = [false; 2];
    while listed != [true, true] {
        let ev = api_rx
            .recv()
            .await
            .context("the Service and EndpointSlice watches ended")?;
        feed(&mut index, ev, &mut listed);
    }

    let mut forwarder = Forwarder::new(Arc::clone(&metrics));
    let mut health = forwarder.service_health();
    let mut config_text: Option<String> = None;
    let mut announcers: Option<Announcers> = None;
    // The configuration and node view the announcers run with.
    let mut applied: Option<(Arc<Config>, NodeView)> = None;
    let host = HostSettings {
        route_linger: opts.route_linger,
        member_keys_file: opts.member_keys_file.clone(),
    };
    // Every Service's roles are checked again on the next pass.
    let mut recheck_all = false;
    let mut told_announcers = false;
    let mut last_members: Vec<Member> = Vec::new();
    let mut last_excluded = Vec::new();
    // What this node announces, per service, and which changes are news.
    let mut announcing = roles::Roles::default();
    // Role Events per Service: a burst, then one per 30 s.
    let mut event_budget = roles::EventBudget::default();
    // The `vip_announced` series set per service, so a change removes its own.
    let mut series: BTreeMap<String, Vec<crate::metrics::AnnouncedLabels>> = BTreeMap::new();
    let mut owned_rx: Option<watch::Receiver<BTreeSet<String>>> = None;
    let mut owned: BTreeSet<String> = BTreeSet::new();
    let mut conflicts_rx: Option<tokio::sync::broadcast::Receiver<crate::l2::ConflictReport>> =
        None;
    let mut conflict_events = ConflictEvents::default();
    let mut bgp_peers: Option<Vec<String>> = None;
    let mut baseline_taken = false;
    let mut own_pod: Option<(String, String)> = None;
    // The durable view is rebuilt at most once a second, less often when it
    // is large (`report::interval`): building and writing it is the one step
    // whose cost grows with every Service this node announces.
    let mut report_at: Option<tokio::time::Instant> = None;
    let mut report_built = tokio::time::Instant::now() - Duration::from_secs(1);
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut health_tick = tokio::time::interval(Duration::from_millis(100));
    // The heartbeat key file (a Secret volume the kubelet updates) is checked this often.
    let mut keys_tick = tokio::time::interval(Duration::from_secs(2));
    // Since when this node hands over (its Pod's deletion seen, or SIGTERM),
    // and when it stops.
    let mut leaving_since: Option<tokio::time::Instant> = None;
    let mut stop_at: Option<tokio::time::Instant> = None;
    // Nodes, speaker Pods or the ConfigMap changed (all of them at start).
    let mut context_changed = true;
    // The forwarder's health, and what layer 2 elections gave this node,
    // changed since the last pass (their watch branches below see it first).
    let mut health_changed = true;
    let mut owned_changed = true;
    loop {
        if context_changed {
            context_changed = false;
            // Configuration: applied when it changes and is valid; otherwise the last valid one stays.
            let cm = config_maps.state().into_iter().next();
            let text = cm.as_ref().and_then(|c| opts.config.text(c));
            if text != config_text {
                config_text = text;
                match cm.as_deref().map(|c| opts.config.read(c)) {
                    Some(Ok(c)) => {
                        metrics.reloaded(true);
                        index.set_config(Arc::new(c));
                    }
                    Some(Err(e)) => {
                        metrics.reloaded(false);
                        tracing::error!("the ConfigMap is invalid; the last valid configuration stays in force:\n{e}");
                    }
                    None => {
                        tracing::error!(configmap = %opts.config.display(), "no configuration yet; announcing nothing")
                    }
                }
            }
            let node_list = nodes.state();
            let me_node = node_list
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(opts.node.as_str()))
                .cloned();
            let pod_list = pods.state();
            let mut member_list = members(&pod_list, &node_list, opts.member_port);
            let mut leaving = leaving_nodes(&pod_list);
            if leaving.contains(&opts.node) && leaving_since.is_none() {
                // The other speakers see the same deletion and take over now.
                let now = tokio::time::Instant::now();
                leaving_since = Some(now);
                if let Some(at) = stop_at.as_mut() {
                    *at = (*at).max(now + opts.handover_delay);
                }
                tracing::info!(node = %opts.node, "this speaker's Pod is being deleted: handing its announcements to the other nodes, forwarding until it stops");
            }
            if leaving_since.is_some() {
                leaving.insert(opts.node.clone());
            }
            own_pod = pod_list
                .iter()
                .find(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(opts.node.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                })
                .and_then(|p| Some((p.metadata.name.clone()?, p.metadata.uid.clone()?)));
            if let Some(cfg) = index.config().cloned() {
                let labels: BTreeMap<String, String> = me_node
                    .as_ref()
                    .and_then(|n| n.metadata.labels.clone())
                    .unwrap_or_default();
                if member_list.iter().all(|m| m.name != opts.node) {
                    match (&announcers, me_node.as_deref().and_then(node_ipv4)) {
                        // Our own Pod may not be listed yet: this node is a member anyway.
                        (None, Some(ip)) => member_list.push(Member {
                            name: opts.node.clone(),
                            address: SocketAddr::new(IpAddr::V4(ip), opts.member_port),
                            labels: labels.clone(),
                        }),
                        // Without this node the list is not one to run on: keep the last.
                        _ => member_list = last_members.clone(),
                    }
                }
                let view = NodeView {
                    node: opts.node.clone(),
                    members: member_list,
                    labels,
                    fallback_id: me_node.as_deref().and_then(node_ipv4),
                };
                let stale = applied
                    .as_ref()
                    .is_none_or(|(c, v)| !Arc::ptr_eq(c, &cfg) || *v != view);
                if stale {
                    let resolved = with_secret_passwords(&client, &opts.namespace, &cfg).await;
                    match announcers.as_mut() {
                        None => {
                            let a =
                                Announcers::start(&resolved, view.clone(), &metrics, &host).await?;
                            tracing::info!(node = %opts.node, announcer = a.name(), members = view.members.len(), "kubernetes speaker announcing");
                            announcers = Some(a);
                        }
                        Some(a) => match a.reconfigure(&resolved, view.clone()).await {
                            Ok(done) => {
                                for line in done {
                                    tracing::info!("reconfigured: {line}");
                                }
                            }
                            Err(e) => {
                                metrics.reloaded(false);
                                tracing::error!("the announcers cannot take the new configuration; they keep running as they were (pools and Services apply): {e:#}");
                            }
                        },
                    }
                    last_members = view.members.clone();
                    applied = Some((cfg, view));
                    if let Some(a) = &announcers {
                        // Layer 2 started or stopped, or the BGP peers changed:
                        // what this node does for every Service may differ.
                        let peers = a.bgp_peers();
                        if a.l2().is_some() != owned_rx.is_some() || peers != bgp_peers {
                            owned_rx = a.l2().map(|l2| l2.owned());
                            conflicts_rx = a.l2().map(|l2| l2.conflicts());
                            if owned_rx.is_none() {
                                owned.clear();
                            }
                            bgp_peers = peers;
                            owned_changed = true;
                            recheck_all = true;
                        }
                    }
                }
            }
            let speakers: BTreeSet<String> = last_members
                .iter()
                .map(|m| m.name.clone())
                .chain(std::iter::once(opts.node.clone()))
                .collect();
            index.set_nodes(&node_list, &speakers, leaving);
            if index.excluded() != last_excluded.as_slice() {
                for e in index.excluded() {
                    tracing::warn!(node = %e.node, reason = e.reason, "node excluded from announcing");
                }
                last_excluded = index.excluded().to_vec();
            }
        }
        if let (Some(cfg), Some(a)) = (index.config().cloned(), announcers.as_mut()) {
            if health_changed {
                health_changed = false;
                let h = health.borrow_and_update().clone();
                index.set_health(&h);
            }
            let delta = index.flush();
            for (svc, why) in &delta.problems {
                tracing::warn!(service = %svc, "{why}");
            }
            if let Some(plan) = &delta.plan {
                for e in forwarder.apply(plan, &cfg.forwarder) {
                    tracing::error!(error = %e, "listener not opened");
                }
            }
            if !delta.changes.is_empty() || !told_announcers {
                a.update(&delta.changes);
                told_announcers = true;
            }
            // What this node announces now, for the Services that changed
            // and those whose layer 2 ownership moved: metrics, and an Event
            // on each change.
            let mut check = delta.touched;
            let rechecking = recheck_all;
            if recheck_all {
                recheck_all = false;
                check.extend(index.keys().cloned());
                check.extend(announcing.announcing().keys().cloned());
            }
            if let Some(rx) = owned_rx.as_mut().filter(|_| owned_changed) {
                owned_changed = false;
                let now = rx.borrow_and_update().clone();
                check.extend(now.symmetric_difference(&owned).cloned());
                owned = now;
            }
            let baseline = !baseline_taken || rechecking;
            baseline_taken = true;
            let view = roles::View {
                me: &opts.node,
                owned: &owned,
                bgp_peers: bgp_peers.as_deref(),
                recheck: rechecking,
            };
            let changed = announcing.pass(&check, |k| index.told(k), &view);
            let report_changed = !changed.is_empty();
            for c in changed {
                for labels in series.remove(&c.key).unwrap_or_default() {
                    metrics.vip_announced.remove(&labels);
                }
                if let Some(v) = index.told(&c.key) {
                    let mut mine = Vec::new();
                    for (mode, _) in &c.now {
                        for vip in &v.vips {
                            let labels = crate::metrics::AnnouncedLabels {
                                service: c.key.clone(),
                                vip: vip.to_string(),
                                mode: mode.to_string(),
                            };
                            metrics.vip_announced.get_or_create(&labels).set(1);
                            mine.push(labels);
                        }
                    }
                    if !mine.is_empty() {
                        series.insert(c.key.clone(), mine);
                    }
                }
                let (reason, action, note) = match c.note {
                    Some(roles::Note::Announced(n)) => ("IPAnnounced", "Announce", n),
                    Some(roles::Note::Withdrawn(n)) => ("IPWithdrawn", "Withdraw", n),
                    None => continue,
                };
                let note = match event_budget.allow(&c.key, std::time::Instant::now()) {
                    None => {
                        metrics.events_held_back.inc();
                        tracing::debug!(service = %c.key, "{note} (no Event: this Service's budget is spent)");
                        continue;
                    }
                    Some(0) => note,
                    Some(held) => {
                        format!("{note} ({held} earlier changes got no Event: the Service flaps)")
                    }
                };
                tracing::info!(service = %c.key, "{note}");
                events.send(service_event(
                    &c.key,
                    index.uid(&c.key),
                    reason,
                    action,
                    note,
                ));
            }
            if (report_changed || baseline) && report_at.is_none() {
                report_at = Some(
                    (report_built + report::interval(announcing.announcing().len()))
                        .max(tokio::time::Instant::now()),
                );
            }
            ready.store(stop_at.is_none(), Ordering::Relaxed);
        }
        tokio::select! {
            ev = api_rx.recv() => {
                let Some(ev) = ev else {
                    anyhow::bail!("the Service and EndpointSlice watches ended");
                };
                if opts.recompute == Recompute::Full {
                    // The reference: a burst settles into one recomputation.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                feed(&mut index, ev, &mut listed);
                // Whatever else is queued goes into the same flush.
                for _ in 0..10_000 {
                    match api_rx.try_recv() {
                        Ok(ev) => feed(&mut index, ev, &mut listed),
                        Err(_) => break,
                    }
                }
            }
            r = changes.changed() => {
                if r.is_err() {
                    anyhow::bail!("every watch ended");
                }
                // Let a burst of changes settle into one recomputation.
                tokio::time::sleep(Duration::from_millis(20)).await;
                changes.borrow_and_update();
                context_changed = true;
            }
            _ = health.changed() => health_changed = true,
            _ = health_tick.tick() => forwarder.refresh_health(),
            _ = keys_tick.tick() => {
                if let Some(a) = announcers.as_mut() {
                    a.refresh_keys();
                }
                event_budget.prune(std::time::Instant::now());
            }
            r = async { owned_rx.as_mut().expect("guarded").changed().await }, if owned_rx.is_some() => {
                // A layer 2 election changed what this node owns.
                owned_changed = true;
                if r.is_err() {
                    owned_rx = None;
                }
            }
            _ = async { tokio::time::sleep_until(report_at.expect("guarded")).await }, if report_at.is_some() => {
                // The durable view (status --api), at most once per `report::interval`.
                report_at = None;
                report_built = tokio::time::Instant::now();
                let report = report::Report::from_roles(announcing.announcing(), |key| {
                    index.told(key).map(|v| vip_list(v)).unwrap_or_default()
                });
                report_tx.send_if_modified(|cur| {
                    let new = (report, own_pod.clone());
                    let changed = *cur != new;
                    *cur = new;
                    changed
                });
            }
            r = async { conflicts_rx.as_mut().expect("guarded").recv().await }, if conflicts_rx.is_some() => {
                match r {
                    Ok((key, vip, mac)) => {
                        if conflict_events.first(&key, mac, std::time::Instant::now()) {
                            let mut ev = service_event(
                                &key,
                                index.uid(&key),
                                "IPConflict",
                                "Reassert",
                                format!("another host (MAC {mac}) answers ARP/NDP for {vip}, which node {} owns; node {} re-asserted it. Find that host: it takes traffic meant for this Service", opts.node, opts.node),
                            );
                            ev.warning = true;
                            events.send(ev);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        for _ in 0..n {
                            metrics.dropped("l2_conflict_reports");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => conflicts_rx = None,
                }
            }
            _ = term.recv() => {
                if stop_at.is_some() {
                    break;
                }
                // Make-before-break: with the Pod's deletion seen (now or
                // within the delay), the others have taken over and this
                // node keeps forwarding while clients and routers move. A
                // SIGTERM nobody else knows of (a container restart) keeps
                // this node announcing until it stops: giving up first
                // would leave the VIPs without an owner until the others
                // notice it is gone.
                let now = tokio::time::Instant::now();
                stop_at = Some(match leaving_since {
                    Some(since) => (since + opts.handover_delay).max(now),
                    None => now + opts.handover_delay,
                });
                ready.store(false, Ordering::Relaxed);
                tracing::info!(node = %opts.node, delay = ?opts.handover_delay, handing_over = leaving_since.is_some(), "SIGTERM: stopping after the handover delay");
            }
            _ = async { tokio::time::sleep_until(stop_at.expect("guarded")).await }, if stop_at.is_some() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: withdrawing, then draining");
    ready.store(false, Ordering::Relaxed);
    if let Some(mut a) = announcers {
        for task in a.stop() {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
    drop(report_tx);
    report::clear(client.clone(), &opts.namespace, &opts.node).await;
    forwarder.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_l2::wire::Mac;
    use std::time::Instant;

    #[test]
    fn one_conflict_event_per_service_and_mac_every_ten_minutes() {
        let mut c = ConflictEvents::default();
        let t = Instant::now();
        let (rogue, other) = (Mac([2, 0, 0, 0, 0, 0x66]), Mac([2, 0, 0, 0, 0, 0x67]));
        assert!(c.first("shop/web", rogue, t));
        // The same attack, re-asserted every second for 9 minutes: no more Events.
        for s in 1..540 {
            assert!(!c.first("shop/web", rogue, t + Duration::from_secs(s)));
        }
        // Another MAC, or another Service, is news.
        assert!(c.first("shop/web", other, t + Duration::from_secs(1)));
        assert!(c.first("shop/api", rogue, t + Duration::from_secs(1)));
        // Ten minutes after the first Event, a conflict that goes on is said again.
        assert!(c.first("shop/web", rogue, t + Duration::from_secs(601)));
    }

    #[test]
    fn forged_macs_cannot_grow_the_conflict_memory() {
        let mut c = ConflictEvents::default();
        let t = Instant::now();
        let mut said = 0;
        for i in 0..5_000u32 {
            let b = i.to_be_bytes();
            if c.first("shop/web", Mac([2, 0, b[0], b[1], b[2], b[3]]), t) {
                said += 1;
            }
        }
        assert_eq!(said, CONFLICT_EVENTS_KEPT);
        assert_eq!(c.last.len(), CONFLICT_EVENTS_KEPT);
    }
}
