//! The Kubernetes speaker's decisions, free of I/O: watch events, the
//! cluster's context (ConfigMap, Nodes, speaker Pods), forwarder health,
//! layer 2 ownership, address conflicts, signals and time go in; announcer
//! (re)configurations, announcement changes, forwarder plans, Events,
//! metric changes and the durable report come out. The runner in
//! `kubernetes/mod.rs` feeds it from watches and channels and carries out
//! what [`Core::step`] returns, like the controller's `core` and `run`.
//!
//! Inputs only record; [`Core::step`] decides, so a burst of inputs is one
//! pass. Invariants: nothing is announced before a valid configuration and
//! running announcers; an invalid ConfigMap changes nothing that runs; a
//! node whose Pod is being deleted hands over before it stops; role Events
//! are budgeted per Service and conflict Events per (Service, MAC).

use super::index::{Index, Kind, Recompute};
use super::model::{Excluded, Filter};
use super::report::{self, Report};
use super::roles;
use crate::announce::Change;
use crate::announcers::NodeView;
use crate::metrics::AnnouncedLabels;
use crate::plan::Plan;
use ferrolb_config::{Config, Member};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One event of the Service and EndpointSlice watches.
pub enum ApiEvent {
    /// A Service watch event.
    Service(Box<watcher::Event<Service>>),
    /// An EndpointSlice watch event.
    Slice(Box<watcher::Event<EndpointSlice>>),
}

/// What the core is fixed with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// UDP port of the membership heartbeats.
    pub member_port: u16,
    /// How long a stopping speaker keeps forwarding after handing over.
    pub handover_delay: Duration,
    /// Which Services, and which nodes.
    pub filter: Filter,
    /// Incremental, or every Service on every change (the reference).
    pub recompute: Recompute,
    /// Where the configuration is in its ConfigMap.
    pub config: ferrolb_kube::ConfigSource,
    /// The configuration is MetalLB's objects, converted
    /// ([`Context::metallb`]), not the ConfigMap.
    pub metallb: bool,
}

/// The rarely changing objects, each kind as a whole.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The configuration ConfigMap, if it exists.
    pub config_map: Option<Arc<ConfigMap>>,
    /// With `--config-source metallb`: MetalLB's objects converted, once
    /// every kind has been listed.
    pub metallb: Option<Arc<ferrolb_kube::metallb::Converted>>,
    /// Every Node.
    pub nodes: Vec<Arc<Node>>,
    /// The speaker Pods.
    pub pods: Vec<Arc<Pod>>,
}

/// What the announcers run, as the runner reports it after carrying out
/// [`Output::Configure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Layer 2 runs (its ownership then arrives through [`Core::owned`]).
    pub l2: bool,
    /// The BGP peers of this node, when BGP runs.
    pub bgp_peers: Option<Vec<String>>,
}

/// A metric the runner sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    /// A configuration was read: valid or not.
    Reloaded(bool),
    /// `ferrolb_vip_announced` is 1 for these labels.
    Announced(AnnouncedLabels),
    /// The series for these labels goes.
    Unannounced(AnnouncedLabels),
    /// A role Event was not sent: its Service's budget is spent.
    EventHeldBack,
}

/// What the runner must do, in order.
#[derive(Debug, Clone)]
pub enum Output {
    /// Start the announcers (the first time) or reconfigure them with this
    /// configuration and view (`passwordSecret`s still to resolve), then
    /// report with [`Core::running`]. A configuration they refuse leaves
    /// them as they were.
    Configure {
        /// The configuration.
        config: Arc<Config>,
        /// Who this node is among the members.
        view: NodeView,
    },
    /// Open and close listeners to match this plan.
    Forward {
        /// Every forwarded Service.
        plan: Plan,
        /// The configuration whose `forwarder` settings apply.
        config: Arc<Config>,
    },
    /// Tell the announcers what changed.
    Announce(Vec<Change>),
    /// Publish an Event.
    Event(ferrolb_kube::EventSpec),
    /// Write the durable view (NodeAnnouncement) when it differs.
    Report {
        /// What this node announces.
        report: Report,
        /// The speaker Pod `(name, uid)` that owns the object, when known.
        pod: Option<(String, String)>,
    },
    /// `/readyz` answers this.
    Ready(bool),
    /// Change a metric.
    Metric(Metric),
    /// Stop now: withdraw, then drain.
    Stop,
}

/// How long one (Service, MAC) conflict stays one Event: an attack that goes
/// on is one Warning, not one a second.
const CONFLICT_EVENT_EVERY: Duration = Duration::from_secs(600);
/// Conflicts remembered at most (a flood of forged MACs cannot grow it).
const CONFLICT_EVENTS_KEPT: usize = 1024;

/// Which conflicts already had their Warning Event.
#[derive(Debug, Default)]
struct ConflictEvents {
    last: BTreeMap<(String, ferrolb_l2::wire::Mac), Instant>,
}

impl ConflictEvents {
    /// Whether this conflict deserves an Event now (and remembers it).
    fn first(&mut self, key: &str, mac: ferrolb_l2::wire::Mac, now: Instant) -> bool {
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

/// The speaker's state between inputs.
pub struct Core {
    s: Settings,
    index: Index,
    /// The first full lists of Services and EndpointSlices arrived.
    listed: [bool; 2],
    /// The ConfigMap's text last read (a change is read again).
    config_text: Option<String>,
    /// A context not yet applied.
    context: Option<Context>,
    /// What the announcers run; `None` until they started.
    running: Option<Running>,
    /// An [`Output::Configure`] is being carried out.
    configuring: bool,
    /// The configuration and view the announcers were given.
    applied: Option<(Arc<Config>, NodeView)>,
    last_members: Vec<Member>,
    last_excluded: Vec<Excluded>,
    /// Every Service's roles are checked on the next pass.
    recheck_all: bool,
    told_announcers: bool,
    /// What this node announces, per Service, and which changes are news.
    announcing: roles::Roles,
    /// Role Events per Service: a burst, then one per 30 s.
    event_budget: roles::EventBudget,
    /// The `vip_announced` series per Service, so a change removes its own.
    series: BTreeMap<String, Vec<AnnouncedLabels>>,
    /// The Services this node owns in layer 2.
    owned: BTreeSet<String>,
    /// Services to re-check on the next pass (ownership moved).
    check: BTreeSet<String>,
    conflict_events: ConflictEvents,
    /// Which virtual-MAC fallbacks already had their Warning Event.
    fallback_events: ConflictEvents,
    /// Forwarder health not yet given to the index.
    health: Option<BTreeMap<String, bool>>,
    baseline_taken: bool,
    own_pod: Option<(String, String)>,
    /// The durable view is rebuilt at most once per `report::interval`: it
    /// is the one step whose cost grows with every Service this node
    /// announces.
    report_at: Option<Instant>,
    report_built: Option<Instant>,
    /// Since when this node hands over (its Pod's deletion seen, or
    /// SIGTERM), and when it stops.
    leaving_since: Option<Instant>,
    stop_at: Option<Instant>,
    /// A second SIGTERM: stop at once.
    stop_now: bool,
    /// What `/readyz` was last told.
    ready: Option<bool>,
    /// Outputs of inputs, for the next step.
    pending: Vec<Output>,
}

impl Core {
    /// A speaker that has seen nothing yet.
    pub fn new(s: Settings) -> Core {
        Core {
            index: Index::new(&s.node, s.filter.clone(), s.recompute),
            s,
            listed: [false; 2],
            config_text: None,
            context: None,
            running: None,
            configuring: false,
            applied: None,
            last_members: Vec::new(),
            last_excluded: Vec::new(),
            recheck_all: false,
            told_announcers: false,
            announcing: roles::Roles::default(),
            event_budget: roles::EventBudget::default(),
            series: BTreeMap::new(),
            owned: BTreeSet::new(),
            check: BTreeSet::new(),
            conflict_events: ConflictEvents::default(),
            fallback_events: ConflictEvents::default(),
            health: None,
            baseline_taken: false,
            own_pod: None,
            report_at: None,
            report_built: None,
            leaving_since: None,
            stop_at: None,
            stop_now: false,
            ready: None,
            pending: Vec::new(),
        }
    }

    /// Whether the first full lists of Services and EndpointSlices arrived.
    pub fn listed(&self) -> bool {
        self.listed == [true, true]
    }

    /// What this node announces, per Service (for tests and reports).
    pub fn announcing(&self) -> &BTreeMap<String, Vec<roles::Role>> {
        self.announcing.announcing()
    }

    /// One Service or EndpointSlice watch event.
    pub fn api(&mut self, ev: ApiEvent) {
        let index = &mut self.index;
        match ev {
            ApiEvent::Service(e) => match *e {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => index.apply_service(&s),
                watcher::Event::Delete(s) => index.delete_service(&s),
                watcher::Event::Init => index.relist(Kind::Service),
                watcher::Event::InitDone => {
                    index.relist_done(Kind::Service);
                    self.listed[0] = true;
                }
            },
            ApiEvent::Slice(e) => match *e {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => index.apply_slice(&s),
                watcher::Event::Delete(s) => index.delete_slice(&s),
                watcher::Event::Init => index.relist(Kind::Slice),
                watcher::Event::InitDone => {
                    index.relist_done(Kind::Slice);
                    self.listed[1] = true;
                }
            },
        }
    }

    /// The ConfigMap, Nodes or speaker Pods changed: the whole context now.
    pub fn context(&mut self, ctx: Context) {
        self.context = Some(ctx);
    }

    /// The announcers carried out [`Output::Configure`] (or refused it and
    /// run as they were): what they run now.
    pub fn running(&mut self, now: Running) {
        self.configuring = false;
        let before = self.running.replace(now.clone());
        // Layer 2 started or stopped, or the BGP peers changed: what this
        // node does for every Service may differ.
        if before.as_ref() != Some(&now) {
            if !now.l2 {
                self.owned.clear();
            }
            self.recheck_all = true;
        }
    }

    /// The forwarder's health per Service.
    pub fn health(&mut self, health: BTreeMap<String, bool>) {
        self.health = Some(health);
    }

    /// What layer 2 elections gave this node now.
    pub fn owned(&mut self, now: BTreeSet<String>) {
        self.check
            .extend(now.symmetric_difference(&self.owned).cloned());
        self.owned = now;
    }

    /// Another host answers ARP/NDP for a VIP this node owns.
    pub fn conflict(&mut self, report: crate::l2::ConflictReport, now: Instant) {
        let (key, vip, mac) = report;
        if !self.conflict_events.first(&key, mac, now) {
            return;
        }
        let me = &self.s.node;
        let note = format!("another host (MAC {mac}) answers ARP/NDP for {vip}, which node {me} owns; node {me} re-asserted it. Find that host: it takes traffic meant for this Service");
        self.warn(&key, "IPConflict", "Reassert", note);
    }

    /// Queues a Warning Event on Service `key`.
    fn warn(&mut self, key: &str, reason: &str, action: &str, note: String) {
        let mut ev = service_event(key, self.index.uid(key), reason, action, note);
        ev.warning = true;
        self.pending.push(Output::Event(ev));
    }

    /// A virtual MAC could not be made here: the Service answers with the
    /// node's MAC, so clients that pin or ignore announcements lose it on
    /// failover. One Warning per (Service, MAC) and 10 minutes.
    pub fn vmac_fallback(&mut self, report: crate::l2::FallbackReport, now: Instant) {
        let (key, mac, why) = report;
        if !self.fallback_events.first(&key, mac, now) {
            return;
        }
        let me = &self.s.node;
        let note = format!("node {me} cannot hold virtual MAC {mac} ({why}); it answers ARP/NDP with its own MAC instead");
        self.warn(&key, "VirtualMACUnavailable", "Fallback", note);
    }

    /// A kernel-mode port of a Service is served in user space: a Warning
    /// on the Service (once per change of mode; the Event budget applies).
    pub fn kernel_fallback(&mut self, f: crate::forwarder::kernel::Fallback) {
        let me = &self.s.node;
        let note = format!(
            "node {me} serves port {} in user space, not in the kernel data path: {}",
            f.port, f.reason
        );
        self.warn(&f.service, "KernelDatapathUnavailable", "Fallback", note);
    }

    /// Time passes: old Event budgets are forgotten.
    pub fn tick(&mut self, now: Instant) {
        self.event_budget.prune(now);
    }

    /// SIGTERM. Make-before-break: with the Pod's deletion seen (now or
    /// within the delay), the others have taken over and this node keeps
    /// forwarding while clients and routers move. A SIGTERM nobody else
    /// knows of (a container restart) keeps this node announcing until it
    /// stops: giving up first would leave the VIPs without an owner until
    /// the others notice it is gone. A second SIGTERM stops at once.
    pub fn term(&mut self, now: Instant) {
        if self.stop_at.is_some() {
            self.stop_now = true;
            return;
        }
        let delay = self.s.handover_delay;
        self.stop_at = Some(match self.leaving_since {
            Some(since) => (since + delay).max(now),
            None => now + delay,
        });
        tracing::info!(node = %self.s.node, ?delay, handing_over = self.leaving_since.is_some(), "SIGTERM: stopping after the handover delay");
    }

    /// When [`Core::step`] has something to do with no new input.
    pub fn next_wake(&self) -> Option<Instant> {
        match (self.report_at, self.stop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides on everything recorded since the last step.
    pub fn step(&mut self, now: Instant) -> Vec<Output> {
        let mut out = std::mem::take(&mut self.pending);
        if self.stop_now || self.stop_at.is_some_and(|at| at <= now) {
            out.push(Output::Stop);
            return out;
        }
        if let Some(ctx) = self.context.take() {
            self.apply_context(ctx, now, &mut out);
        }
        if self.configuring {
            // The rest waits for what the announcers run.
            return out;
        }
        let running = self.running.is_some() && self.index.config().is_some();
        if running {
            self.pass(now, &mut out);
        }
        if self.report_at.is_some_and(|at| at <= now) {
            self.report_at = None;
            self.report_built = Some(now);
            let index = &self.index;
            let report = Report::from_roles(self.announcing.announcing(), |key| {
                index
                    .told(key)
                    .map(|v| crate::announce::vip_list(v))
                    .unwrap_or_default()
            });
            out.push(Output::Report {
                report,
                pod: self.own_pod.clone(),
            });
        }
        let ready = self.stop_at.is_none() && (running || self.ready == Some(true));
        if self.ready != Some(ready) {
            self.ready = Some(ready);
            out.push(Output::Ready(ready));
        }
        out
    }

    /// The configuration (applied when it changes and is valid; otherwise
    /// the last valid one stays), this node's view of the members, and the
    /// nodes that may announce.
    fn apply_context(&mut self, ctx: Context, now: Instant, out: &mut Vec<Output>) {
        let me = self.s.node.clone();
        let cm = ctx.config_map.as_deref();
        let converted = ctx.metallb.as_deref().filter(|_| self.s.metallb);
        let text = if self.s.metallb {
            converted.map(|c| c.text.clone())
        } else {
            cm.and_then(|c| self.s.config.text(c))
        };
        if text != self.config_text {
            self.config_text = text;
            let read = if self.s.metallb {
                converted.map(|c| c.config.clone())
            } else {
                cm.map(|c| self.s.config.read(c))
            };
            match read {
                Some(Ok(c)) => {
                    out.push(Output::Metric(Metric::Reloaded(true)));
                    self.index.set_config(Arc::new(c));
                }
                Some(Err(e)) => {
                    out.push(Output::Metric(Metric::Reloaded(false)));
                    let what = if self.s.metallb {
                        "MetalLB's objects convert to an invalid configuration"
                    } else {
                        "the ConfigMap is invalid"
                    };
                    tracing::error!("{what}; the last valid configuration stays in force:\n{e}");
                }
                None if self.s.metallb => {
                    tracing::error!("MetalLB's objects are not listed yet; announcing nothing")
                }
                None => {
                    tracing::error!(configmap = %self.s.config.display(), "no configuration yet; announcing nothing")
                }
            }
        }
        let me_node = ctx
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(me.as_str()))
            .cloned();
        let mut member_list = members(&ctx.pods, &ctx.nodes, self.s.member_port);
        let mut leaving = leaving_nodes(&ctx.pods);
        if leaving.contains(&me) && self.leaving_since.is_none() {
            // The other speakers see the same deletion and take over now.
            self.leaving_since = Some(now);
            if let Some(at) = self.stop_at.as_mut() {
                *at = (*at).max(now + self.s.handover_delay);
            }
            tracing::info!(node = %me, "this speaker's Pod is being deleted: handing its announcements to the other nodes, forwarding until it stops");
        }
        if self.leaving_since.is_some() {
            leaving.insert(me.clone());
        }
        self.own_pod = ctx
            .pods
            .iter()
            .find(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(me.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            })
            .and_then(|p| Some((p.metadata.name.clone()?, p.metadata.uid.clone()?)));
        if let Some(cfg) = self.index.config().cloned() {
            let labels: BTreeMap<String, String> = me_node
                .as_ref()
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            if member_list.iter().all(|m| m.name != me) {
                match (&self.running, me_node.as_deref().and_then(node_ipv4)) {
                    // Our own Pod may not be listed yet: this node is a member anyway.
                    (None, Some(ip)) => member_list.push(Member {
                        name: me.clone(),
                        address: SocketAddr::new(IpAddr::V4(ip), self.s.member_port),
                        labels: labels.clone(),
                    }),
                    // Without this node the list is not one to run on: keep the last.
                    _ => member_list = self.last_members.clone(),
                }
            }
            let view = NodeView {
                node: me.clone(),
                members: member_list,
                labels,
                fallback_id: me_node.as_deref().and_then(node_ipv4),
            };
            let stale = self
                .applied
                .as_ref()
                .is_none_or(|(c, v)| !Arc::ptr_eq(c, &cfg) || *v != view);
            if stale {
                self.last_members = view.members.clone();
                self.applied = Some((Arc::clone(&cfg), view.clone()));
                self.configuring = true;
                out.push(Output::Configure { config: cfg, view });
            }
        }
        let speakers: BTreeSet<String> = self
            .last_members
            .iter()
            .map(|m| m.name.clone())
            .chain(std::iter::once(me))
            .collect();
        self.index.set_nodes(&ctx.nodes, &speakers, leaving);
        if self.index.excluded() != self.last_excluded.as_slice() {
            for e in self.index.excluded() {
                tracing::warn!(node = %e.node, reason = e.reason, "node excluded from announcing");
            }
            self.last_excluded = self.index.excluded().to_vec();
        }
    }

    /// What changed for the announcers and the forwarder, then what this
    /// node announces now for the Services that changed and those whose
    /// layer 2 ownership moved: metrics, and an Event on each change.
    fn pass(&mut self, now: Instant, out: &mut Vec<Output>) {
        let Some(cfg) = self.index.config().cloned() else {
            return;
        };
        if let Some(h) = self.health.take() {
            self.index.set_health(&h);
        }
        let delta = self.index.flush();
        for (svc, why) in &delta.problems {
            tracing::warn!(service = %svc, "{why}");
        }
        if let Some(plan) = delta.plan {
            out.push(Output::Forward {
                plan,
                config: Arc::clone(&cfg),
            });
        }
        if !delta.changes.is_empty() || !self.told_announcers {
            out.push(Output::Announce(delta.changes));
            self.told_announcers = true;
        }
        let mut check = delta.touched;
        check.append(&mut self.check);
        let rechecking = std::mem::take(&mut self.recheck_all);
        if rechecking {
            check.extend(self.index.keys().cloned());
            check.extend(self.announcing.announcing().keys().cloned());
        }
        let baseline = !self.baseline_taken || rechecking;
        self.baseline_taken = true;
        let bgp_peers = self.running.as_ref().and_then(|r| r.bgp_peers.clone());
        let view = roles::View {
            me: &self.s.node,
            owned: &self.owned,
            bgp_peers: bgp_peers.as_deref(),
            recheck: rechecking,
        };
        let index = &self.index;
        let changed = self.announcing.pass(&check, |k| index.told(k), &view);
        let report_changed = !changed.is_empty();
        for c in changed {
            for labels in self.series.remove(&c.key).unwrap_or_default() {
                out.push(Output::Metric(Metric::Unannounced(labels)));
            }
            if let Some(v) = self.index.told(&c.key) {
                let mut mine = Vec::new();
                for (mode, _) in &c.now {
                    for vip in &v.vips {
                        let labels = AnnouncedLabels {
                            service: c.key.clone(),
                            vip: vip.to_string(),
                            mode: mode.to_string(),
                        };
                        out.push(Output::Metric(Metric::Announced(labels.clone())));
                        mine.push(labels);
                    }
                }
                if !mine.is_empty() {
                    self.series.insert(c.key.clone(), mine);
                }
            }
            let (reason, action, note) = match c.note {
                Some(roles::Note::Announced(n)) => ("IPAnnounced", "Announce", n),
                Some(roles::Note::Withdrawn(n)) => ("IPWithdrawn", "Withdraw", n),
                None => continue,
            };
            let note = match self.event_budget.allow(&c.key, now) {
                None => {
                    out.push(Output::Metric(Metric::EventHeldBack));
                    tracing::debug!(service = %c.key, "{note} (no Event: this Service's budget is spent)");
                    continue;
                }
                Some(0) => note,
                Some(held) => {
                    format!("{note} ({held} earlier changes got no Event: the Service flaps)")
                }
            };
            tracing::info!(service = %c.key, "{note}");
            out.push(Output::Event(service_event(
                &c.key,
                self.index.uid(&c.key),
                reason,
                action,
                note,
            )));
        }
        if (report_changed || baseline) && self.report_at.is_none() {
            let earliest = self
                .report_built
                .map(|t| t + report::interval(self.announcing.announcing().len()));
            self.report_at = Some(earliest.map_or(now, |t| t.max(now)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrolb_l2::wire::Mac;
    use serde_json::json;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    const POOLS: &str = "pools: [{name: vips, addresses: [203.0.113.0/24]}]\n";
    const DELAY: Duration = Duration::from_secs(5);

    fn core() -> Core {
        Core::new(Settings {
            node: "n1".into(),
            member_port: 7947,
            handover_delay: DELAY,
            filter: Filter::default(),
            recompute: Recompute::Incremental,
            config: ferrolb_kube::ConfigSource {
                namespace: "ferrolb-system".into(),
                name: "ferrolb".into(),
                key: "config.yaml".into(),
            },
            metallb: false,
        })
    }

    fn config_map(text: &str) -> Arc<ConfigMap> {
        Arc::new(obj(json!({
            "metadata": {"namespace": "ferrolb-system", "name": "ferrolb"},
            "data": {"config.yaml": text}
        })))
    }

    fn node(name: &str, ip: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(obj(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
        })))
    }

    /// A Running speaker Pod on `node`, being deleted when `deleting`.
    fn pod(node: &str, ip: &str, deleting: bool) -> Arc<Pod> {
        let mut meta = json!({"namespace": "ferrolb-system", "name": format!("speaker-{node}"), "uid": format!("uid-{node}")});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        }
        Arc::new(obj(json!({
            "metadata": meta,
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "hostIP": ip}
        })))
    }

    /// Two nodes, both with a running speaker, and `config` in the ConfigMap.
    fn cluster(config: Option<&str>, deleting: &[&str]) -> Context {
        Context {
            config_map: config.map(config_map),
            metallb: None,
            nodes: vec![
                node("n1", "192.0.2.1", json!({"zone": "a"})),
                node("n2", "192.0.2.2", json!({"zone": "b"})),
            ],
            pods: vec![
                pod("n1", "192.0.2.1", deleting.contains(&"n1")),
                pod("n2", "192.0.2.2", deleting.contains(&"n2")),
            ],
        }
    }

    fn service(name: &str, ip: &str) -> ApiEvent {
        ApiEvent::Service(Box::new(watcher::Event::Apply(obj(json!({
            "metadata": {"namespace": "shop", "name": name, "uid": format!("u-{name}")},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}
        })))))
    }

    /// An EndpointSlice of Service `name` with one endpoint on `node`, ready or not.
    fn slice(name: &str, node: &str, ready: bool) -> ApiEvent {
        ApiEvent::Slice(Box::new(watcher::Event::Apply(obj(json!({
            "metadata": {"namespace": "shop", "name": format!("{name}-1"),
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.5"], "nodeName": node, "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        })))))
    }

    fn listed(c: &mut Core) {
        for ev in [
            ApiEvent::Service(Box::new(watcher::Event::InitDone)),
            ApiEvent::Slice(Box::new(watcher::Event::InitDone)),
        ] {
            c.api(ev);
        }
        assert!(c.listed());
    }

    fn configures(out: &[Output]) -> Vec<&NodeView> {
        out.iter()
            .filter_map(|o| match o {
                Output::Configure { view, .. } => Some(view),
                _ => None,
            })
            .collect()
    }

    /// The Events in `out`: (reason, note).
    fn events(out: &[Output]) -> Vec<(String, String)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some((e.reason.clone(), e.note.clone())),
                _ => None,
            })
            .collect()
    }

    fn announced(out: &[Output]) -> Vec<Change> {
        out.iter()
            .filter_map(|o| match o {
                Output::Announce(c) => Some(c.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn metrics(out: &[Output]) -> Vec<&Metric> {
        out.iter()
            .filter_map(|o| match o {
                Output::Metric(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn ready(out: &[Output]) -> Option<bool> {
        out.iter().rev().find_map(|o| match o {
            Output::Ready(r) => Some(*r),
            _ => None,
        })
    }

    fn bgp() -> Running {
        Running {
            l2: false,
            bgp_peers: Some(vec!["tor".into()]),
        }
    }

    /// A core running BGP to `tor` with one Service `web` that has a
    /// ready endpoint, after its first steps.
    fn started(t: Instant) -> (Core, Vec<Output>) {
        let mut c = core();
        c.api(service("web", "203.0.113.10"));
        c.api(slice("web", "n2", true));
        listed(&mut c);
        c.context(cluster(Some(POOLS), &[]));
        let mut out = c.step(t);
        assert_eq!(configures(&out).len(), 1, "{out:?}");
        c.running(bgp());
        out.extend(c.step(t));
        (c, out)
    }

    #[test]
    fn nothing_is_announced_before_a_configuration() {
        let mut c = core();
        c.api(service("web", "203.0.113.10"));
        listed(&mut c);
        let t = Instant::now();
        c.context(cluster(None, &[]));
        let out = c.step(t);
        assert!(configures(&out).is_empty(), "{out:?}");
        assert!(announced(&out).is_empty());
        assert_eq!(ready(&out), Some(false));
        // Nor with a ConfigMap that is invalid: counted, nothing starts.
        c.context(cluster(Some("pools: [{name: vips}]\n"), &[]));
        let out = c.step(t);
        assert!(configures(&out).is_empty(), "{out:?}");
        assert_eq!(metrics(&out), vec![&Metric::Reloaded(false)]);
    }

    #[test]
    fn the_first_valid_configuration_starts_the_announcers_then_announces() {
        let t = Instant::now();
        let mut c = core();
        c.api(service("web", "203.0.113.10"));
        c.api(slice("web", "n2", true));
        listed(&mut c);
        c.context(cluster(Some(POOLS), &[]));
        let out = c.step(t);
        // The view: both speakers, this node's labels and address.
        let views = configures(&out);
        assert_eq!(views.len(), 1);
        let names: Vec<&str> = views[0].members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2"]);
        assert_eq!(views[0].labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(views[0].fallback_id, Some("192.0.2.1".parse().expect("ip")));
        // Nothing is announced until the announcers say what runs.
        assert!(announced(&out).is_empty());
        assert!(c.step(t).is_empty(), "waits for the announcers");
        c.running(bgp());
        let out = c.step(t);
        let changes = announced(&out);
        assert_eq!(changes.len(), 1, "{out:?}");
        let Change::Put(v) = &changes[0] else {
            panic!("expected a Put: {changes:?}");
        };
        assert_eq!(v.key, "shop/web");
        assert!(v.eligible("n1") && v.eligible("n2"));
        // Announced over BGP at start: a metric, no Event (a restarted
        // speaker resuming its routes is not news).
        assert!(events(&out).is_empty(), "{out:?}");
        assert!(metrics(&out).iter().any(|m| matches!(m,
            Metric::Announced(l) if l.service == "shop/web" && l.mode == "bgp" && l.vip == "203.0.113.10")));
        assert_eq!(ready(&out), Some(true));
        assert!(out.iter().any(|o| matches!(o, Output::Report { report, pod }
            if report.bgp == ["shop/web=203.0.113.10"] && pod.as_ref().is_some_and(|p| p.0 == "speaker-n1"))));
        // The same context again is not a reconfiguration.
        c.context(cluster(Some(POOLS), &[]));
        assert!(configures(&c.step(t)).is_empty());
    }

    #[test]
    fn an_invalid_configmap_keeps_the_running_configuration() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        c.context(cluster(
            Some("pools: [{name: vips, addresses: [nonsense]}]\n"),
            &[],
        ));
        let out = c.step(t);
        assert!(configures(&out).is_empty(), "{out:?}");
        assert!(announced(&out).is_empty(), "{out:?}");
        assert_eq!(metrics(&out), vec![&Metric::Reloaded(false)]);
        assert_eq!(c.announcing().len(), 1);
        // A valid change is applied: the announcers get it first.
        let wider = "pools: [{name: vips, addresses: [203.0.113.0/24, 198.51.100.0/24]}]\n";
        c.context(cluster(Some(wider), &[]));
        let out = c.step(t);
        assert_eq!(configures(&out).len(), 1, "{out:?}");
        assert_eq!(metrics(&out), vec![&Metric::Reloaded(true)]);
    }

    #[test]
    fn a_node_label_change_reconfigures_and_new_bgp_peers_recheck_quietly() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        let mut ctx = cluster(Some(POOLS), &[]);
        ctx.nodes[0] = node("n1", "192.0.2.1", json!({"zone": "c"}));
        c.context(ctx);
        let out = c.step(t);
        let views = configures(&out);
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].labels.get("zone").map(String::as_str), Some("c"));
        c.running(Running {
            l2: false,
            bgp_peers: Some(vec!["tor".into(), "tor2".into()]),
        });
        let out = c.step(t);
        // The role changed for every Service (new peer list): series
        // replaced, but a reconfiguration is no Event per Service.
        let m = metrics(&out);
        assert!(
            m.iter().any(|m| matches!(m, Metric::Unannounced(_))),
            "{out:?}"
        );
        assert!(
            m.iter().any(|m| matches!(m, Metric::Announced(_))),
            "{out:?}"
        );
        assert!(events(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn layer2_ownership_moves_are_events_and_metrics() {
        let t = Instant::now();
        let mut c = core();
        c.api(service("web", "203.0.113.10"));
        c.api(slice("web", "n2", true));
        listed(&mut c);
        c.context(cluster(Some(POOLS), &[]));
        c.step(t);
        c.running(Running {
            l2: true,
            bgp_peers: None,
        });
        c.owned(BTreeSet::new());
        let out = c.step(t);
        assert_eq!(announced(&out).len(), 1);
        assert!(events(&out).is_empty(), "owning nothing is no news");
        c.owned(BTreeSet::from(["shop/web".to_string()]));
        let out = c.step(t);
        assert_eq!(
            events(&out),
            [(
                "IPAnnounced".to_string(),
                "node n1 announces 203.0.113.10 as its layer 2 owner".to_string()
            )]
        );
        assert!(metrics(&out)
            .iter()
            .any(|m| matches!(m, Metric::Announced(l) if l.mode == "l2")));
        c.owned(BTreeSet::new());
        let out = c.step(t + Duration::from_secs(1));
        assert_eq!(
            events(&out),
            [(
                "IPWithdrawn".to_string(),
                "node n1 no longer announces 203.0.113.10".to_string()
            )]
        );
        assert!(metrics(&out)
            .iter()
            .any(|m| matches!(m, Metric::Unannounced(l) if l.mode == "l2")));
        assert!(c.announcing().is_empty());
        // Layer 2 stops (a reconfiguration): what it owned is forgotten.
        c.owned(BTreeSet::from(["shop/web".to_string()]));
        c.step(t);
        c.context(cluster(
            Some("pools: [{name: vips, addresses: [203.0.113.0/25]}]\n"),
            &[],
        ));
        assert_eq!(configures(&c.step(t)).len(), 1);
        c.running(bgp());
        c.step(t);
        assert_eq!(c.announcing().get("shop/web").map(|r| r[0].0), Some("bgp"));
    }

    #[test]
    fn a_flapping_service_gets_a_burst_of_events_then_one_per_half_minute() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        let mut sent = 0;
        let mut held = 0;
        // Endpoints flap every 100 ms for 2 s: 20 role changes.
        for i in 0..20u64 {
            c.api(slice("web", "n2", i % 2 == 1));
            let out = c.step(t + Duration::from_millis(100 * i));
            sent += events(&out).len();
            held += metrics(&out)
                .iter()
                .filter(|m| matches!(m, Metric::EventHeldBack))
                .count();
        }
        assert_eq!(sent, roles::EVENT_BURST as usize);
        assert_eq!(sent + held, 20);
        // Half a minute later the next change gets its Event, which says
        // how many were held back.
        c.api(slice("web", "n2", false));
        let out = c.step(t + roles::EVENT_EVERY + Duration::from_secs(2));
        let ev = events(&out);
        assert_eq!(ev.len(), 1, "{out:?}");
        assert!(
            ev[0].1.contains("15 earlier changes got no Event"),
            "{ev:?}"
        );
    }

    #[test]
    fn a_deleted_pod_hands_over_and_stops_after_the_delay() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        c.context(cluster(Some(POOLS), &["n1"]));
        let out = c.step(t);
        // This node leaves every election: its entry no longer has it.
        let changes = announced(&out);
        assert!(
            changes
                .iter()
                .any(|ch| matches!(ch, Change::Put(v) if !v.eligible("n1") && v.eligible("n2"))),
            "{out:?}"
        );
        assert_eq!(events(&out).len(), 1, "a withdrawal is news: {out:?}");
        assert_eq!(events(&out)[0].0, "IPWithdrawn");
        // Still ready and forwarding until SIGTERM, which stops after the
        // delay counted from the deletion.
        c.term(t + Duration::from_secs(2));
        let out = c.step(t + Duration::from_secs(2));
        assert_eq!(ready(&out), Some(false));
        assert_eq!(c.next_wake(), Some(t + DELAY));
        assert!(!c
            .step(t + DELAY - Duration::from_millis(1))
            .iter()
            .any(|o| matches!(o, Output::Stop)));
        assert!(c.step(t + DELAY).iter().any(|o| matches!(o, Output::Stop)));
    }

    #[test]
    fn sigterm_keeps_announcing_until_the_delay_and_a_second_one_stops_at_once() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        c.term(t);
        let out = c.step(t);
        assert_eq!(ready(&out), Some(false));
        assert!(
            announced(&out).is_empty(),
            "a container restart withdraws nothing early"
        );
        assert_eq!(c.next_wake(), Some(t + DELAY));
        c.term(t + Duration::from_secs(1));
        assert!(c
            .step(t + Duration::from_secs(1))
            .iter()
            .any(|o| matches!(o, Output::Stop)));
    }

    #[test]
    fn the_report_is_written_at_most_once_a_second() {
        let t = Instant::now();
        let (mut c, out) = started(t);
        let reports = |out: &[Output]| {
            out.iter()
                .filter(|o| matches!(o, Output::Report { .. }))
                .count()
        };
        assert_eq!(reports(&out), 1);
        c.api(service("api", "203.0.113.11"));
        c.api(ApiEvent::Slice(Box::new(watcher::Event::Apply(obj(json!({
            "metadata": {"namespace": "shop", "name": "api-1", "labels": {"kubernetes.io/service-name": "api"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.6"], "nodeName": "n2", "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))))));
        let out = c.step(t + Duration::from_millis(100));
        assert_eq!(announced(&out).len(), 1);
        assert_eq!(reports(&out), 0, "too soon after the last");
        let due = c.next_wake().expect("a report is due");
        assert_eq!(due, t + report::interval(2));
        let out = c.step(due);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Report { report, .. } if report.bgp.len() == 2)),
            "{out:?}"
        );
        assert_eq!(c.next_wake(), None);
    }

    /// The Warning Events among `out`.
    fn warnings(out: &[Output]) -> Vec<&ferrolb_kube::EventSpec> {
        out.iter()
            .filter_map(|o| match o {
                Output::Event(e) if e.warning => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn conflicts_are_one_warning_per_service_and_mac() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        let vip: IpAddr = "203.0.113.10".parse().expect("ip");
        let rogue = Mac([2, 0, 0, 0, 0, 0x66]);
        for s in 0..30 {
            c.conflict(("shop/web".into(), vip, rogue), t + Duration::from_secs(s));
        }
        let out = c.step(t);
        let warnings = warnings(&out);
        assert_eq!(warnings.len(), 1, "{out:?}");
        assert_eq!(warnings[0].reason, "IPConflict");
        assert_eq!(warnings[0].regarding.uid.as_deref(), Some("u-web"));
        assert!(
            warnings[0].note.contains("02:00:00:00:00:66"),
            "{}",
            warnings[0].note
        );
    }

    #[test]
    fn a_virtual_mac_fallback_is_one_warning_per_service_and_mac() {
        let t = Instant::now();
        let (mut c, _) = started(t);
        let vmac = Mac([2, 0xb4, 0x98, 0x1c, 0x29, 0x5f]);
        for s in 0..5 {
            c.vmac_fallback(
                ("shop/web".into(), vmac, "Device or resource busy".into()),
                t + Duration::from_secs(s),
            );
        }
        let out = c.step(t);
        let warnings = warnings(&out);
        assert_eq!(warnings.len(), 1, "{out:?}");
        assert_eq!(warnings[0].reason, "VirtualMACUnavailable");
        assert_eq!(warnings[0].regarding.uid.as_deref(), Some("u-web"));
        assert!(
            warnings[0].note.contains("02:b4:98:1c:29:5f") && warnings[0].note.contains("busy")
        );
    }

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
