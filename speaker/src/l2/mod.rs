//! Layer 2 mode: this node answers ARP/NDP for the VIPs it owns, announces
//! them when it takes them, and agrees with the other members on one owner
//! per service through UDP heartbeats, with no API server involved.
//!
//! The decisions are pure code in `ferrolb-l2` (codec, responder, election,
//! failure detector); this module owns sockets, timers and host settings.

pub mod groups;
pub mod iface;
pub mod vmac;

use crate::announce::{self, Announcer, Table};
use crate::metrics::{IfaceLabels, Metrics};
use ferrolb_config::{L2Advertisement, Member};
use ferrolb_l2::election::{self, Claim};
use ferrolb_l2::limit::SourceLimiter;
use ferrolb_l2::membership::{Change, Fast, Membership, Timing};
use ferrolb_l2::respond::Responder;
use ferrolb_l2::wire::solicited_node;
use ferrolb_sys::PacketSocket;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Conflicts (another MAC answering for an owned VIP) waiting for the runner.
const CONFLICT_QUEUE: usize = 64;
/// Conflict reports held for a slow subscriber.
const CONFLICT_REPORTS: usize = 16;
/// A conflict re-asserts a service at most this often.
const REASSERT_EVERY: Duration = Duration::from_secs(1);

/// A conflict the runner reports: (service key, VIP, the other MAC).
pub type ConflictReport = (String, IpAddr, ferrolb_l2::wire::Mac);

/// A virtual MAC that could not be made: (service key, the MAC, why); the
/// Service answers with the node MAC meanwhile.
pub type FallbackReport = (String, ferrolb_l2::wire::Mac, String);

/// How layer 2 mode runs on this node.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name (one of `members`).
    pub node: String,
    /// Every member, this node included.
    pub members: Vec<Member>,
    /// The `l2` advertisements.
    pub advertisements: Vec<L2Advertisement>,
    /// Failure detector timing.
    pub timing: Timing,
    /// Fast detection (`failover.profile: fast`), if on.
    pub fast: Option<Fast>,
    /// Periodic re-announcement of owned VIPs, so that switch FDB and client
    /// ARP ageing never leave a VIP pointing nowhere; zero disables it.
    pub refresh: Duration,
    /// Announcements are sent at once when a VIP is taken, then again at
    /// these offsets (a lost first frame is repeated quickly).
    pub repeats: Vec<Duration>,
    /// Heartbeat keys (none: unsigned heartbeats, a warning at start).
    pub keys: ferrolb_l2::auth::Keys,
}

/// What a running layer 2 announcer can change without a restart.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `l2` advertisements (pools, node selectors, interfaces).
    pub advertisements: Vec<L2Advertisement>,
    /// Failure detector timing.
    pub timing: Timing,
    /// Fast detection, if on.
    pub fast: Option<Fast>,
    /// Periodic re-announcement of owned VIPs; zero disables it.
    pub refresh: Duration,
    /// Announcement repeats after a takeover.
    pub repeats: Vec<Duration>,
    /// Heartbeat keys.
    pub keys: ferrolb_l2::auth::Keys,
}

impl Options {
    /// The part of these options a reconfiguration may change.
    pub fn settings(&self) -> Settings {
        Settings {
            advertisements: self.advertisements.clone(),
            timing: self.timing,
            fast: self.fast,
            refresh: self.refresh,
            repeats: self.repeats.clone(),
            keys: self.keys.clone(),
        }
    }
}

/// The interfaces the advertisements name (empty: any suitable one), and
/// the patterns left out then: only those every entry excludes, since an
/// entry that does not exclude an interface announces on it.
pub fn wanted_interfaces(ads: &[L2Advertisement]) -> iface::Wanted {
    // An entry without interfaces wants every suitable one; which VIP is
    // answered where is then decided per entry (`answers_on`).
    let mut named: Vec<String> = if ads.iter().any(|a| a.interfaces.is_empty()) {
        Vec::new()
    } else {
        ads.iter().flat_map(|a| a.interfaces.clone()).collect()
    };
    named.sort();
    named.dedup();
    let mut excluded: Vec<String> = ads
        .first()
        .map(|a| a.exclude_interfaces.clone())
        .unwrap_or_default();
    excluded.retain(|p| ads.iter().all(|a| a.exclude_interfaces.contains(p)));
    iface::Wanted { named, excluded }
}

/// Whether this node answers for a VIP of a service of `pool` labelled
/// `service` on interface `iface`: some entry covering the service and
/// selecting the node (by `labels`) names the interface, or names none (any
/// interface the node announces on). Each entry's `interfaces` thus scope
/// its own pools and services, not every VIP.
fn answers_on(
    ads: &[L2Advertisement],
    labels: &BTreeMap<String, String>,
    pool: &str,
    service: &announce::Labels,
    iface: &str,
) -> bool {
    ads.iter()
        .filter(|a| a.covers(pool, service))
        .filter(|a| a.node_selector.as_ref().is_none_or(|s| s.matches(labels)))
        .any(|a| a.interfaces.is_empty() || a.interfaces.iter().any(|i| i == iface))
}

/// The entries (by index) covering a group: those covering the pool and
/// the labels of any member. The members have one owner, so an address
/// two Services share is announced when either is selected, from the nodes
/// either entry allows (MetalLB elects per Service and can split such an
/// address across two nodes: metallb#3025).
fn covering(ads: &[L2Advertisement], g: &groups::Group) -> Vec<usize> {
    ads.iter()
        .enumerate()
        .filter(|(_, a)| g.services.iter().any(|s| a.covers(&s.pool, &s.labels)))
        .map(|(i, _)| i)
        .collect()
}

/// Why layer 2 mode cannot start.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    /// The node is not a member.
    #[error("node {0:?} is not in `members`; start the speaker with --node set to one of the member names")]
    NotAMember(String),
    /// No interface to announce on.
    #[error("no interface to announce on (wanted: {0}); check `l2[].interfaces` and that the interface is up")]
    NoInterface(String),
    /// Host settings.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// A socket.
    #[error("cannot open {what}: {source}")]
    Socket {
        /// Which socket.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct IfaceRt {
    name: String,
    index: u32,
    /// Link detected, rechecked every 100 ms.
    carrier: bool,
    receiver: tokio::task::JoinHandle<()>,
    socket: Arc<PacketSocket>,
    responder: Arc<Mutex<Responder>>,
    /// Joins the solicited-node groups of owned IPv6 VIPs on this interface.
    mcast: Option<socket2::Socket>,
    joined: BTreeSet<Ipv6Addr>,
}

impl Owned {
    /// Announces from `now` on, as at a takeover (the MAC it answers with changed).
    fn announce_from(&mut self, now: Instant) {
        self.taken = now;
        self.next = now;
        self.sent = 0;
    }
}

struct Owned {
    /// The group's virtual MAC, when its advertisement asks for one.
    mac: Option<ferrolb_l2::wire::Mac>,
    /// Waiting for the virtual-MAC links: neither answered nor announced yet.
    pending: bool,
    /// Start of the claim as peers see it (made fresh while isolated).
    since: Instant,
    /// When this node took the service (the announcement schedule's origin).
    taken: Instant,
    vips: Vec<IpAddr>,
    /// The service's pool and labels: which entries, so which interfaces,
    /// cover it.
    pool: String,
    labels: Arc<announce::Labels>,
    next: Instant,
    sent: usize,
    /// When a conflict last made this node re-assert the service.
    reasserted: Option<Instant>,
}

/// The latest services and members for the runner. Each is a whole
/// snapshot, so a watch channel keeps only the newest: a burst of API
/// changes costs one update, never a growing queue.
type Latest<T> = std::sync::Arc<tokio::sync::watch::Sender<Option<T>>>;

/// The handle standalone and Kubernetes mode talk to (clones talk to the same runner).
#[derive(Clone)]
pub struct L2Announcer {
    /// Service changes, in order (the runner keeps the table).
    services: mpsc::UnboundedSender<Arc<[announce::Change]>>,
    members: Latest<Vec<Member>>,
    owned: tokio::sync::watch::Receiver<BTreeSet<String>>,
    conflicts: tokio::sync::broadcast::Sender<ConflictReport>,
    fallbacks: tokio::sync::broadcast::Sender<FallbackReport>,
    settings: Latest<Settings>,
}

impl L2Announcer {
    /// Conflicts this node re-asserted a VIP against (at most one a second
    /// per service); a receiver that falls behind loses the oldest.
    pub fn conflicts(&self) -> tokio::sync::broadcast::Receiver<ConflictReport> {
        self.conflicts.subscribe()
    }

    /// Removes this node's virtual-MAC links, as the speaker exits after
    /// draining: none outlives it (a restarted one also removes any a
    /// killed run left behind).
    pub async fn remove_virtual_macs(&self) {
        vmac::remove_all_logged("on the way out").await;
    }

    /// Virtual MACs that could not be made (once per link and failure).
    pub fn fallbacks(&self) -> tokio::sync::broadcast::Receiver<FallbackReport> {
        self.fallbacks.subscribe()
    }

    /// Replaces the member list (Kubernetes mode: the speaker Pods, with their
    /// nodes' labels). Members that stay keep their state.
    pub fn set_members(&self, members: Vec<Member>) {
        self.members.send_replace(Some(members));
    }

    /// Applies new advertisements, timing, announcement schedule and keys
    /// without a restart: members keep their state and services their
    /// owner unless the new advertisements move them. Refused (nothing
    /// changes) when no interface the new advertisements name exists.
    pub fn reconfigure(&self, settings: Settings) -> Result<(), L2Error> {
        self.check(&settings)?;
        self.settings.send_replace(Some(settings));
        Ok(())
    }

    /// Whether `settings` can apply here: some interface they name exists.
    pub fn check(&self, settings: &Settings) -> Result<(), L2Error> {
        let named = wanted_interfaces(&settings.advertisements);
        if iface::announcing(&named).is_empty() {
            return Err(L2Error::NoInterface(named.describe()));
        }
        Ok(())
    }

    /// The services this node owns (announces) now; changes as elections go.
    pub fn owned(&self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        self.owned.clone()
    }
}

impl Drop for IfaceRt {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// Opens the responder of one interface.
fn open_iface(
    i: &iface::Iface,
    conflicts: &mpsc::Sender<(IpAddr, ferrolb_l2::wire::Mac)>,
    metrics: &Arc<Metrics>,
    main: &tokio::runtime::Handle,
) -> Result<IfaceRt, L2Error> {
    let socket = Arc::new(
        PacketSocket::open(i.index).map_err(|source| L2Error::Socket {
            what: format!("a packet socket on {}", i.name),
            source,
        })?,
    );
    let responder = Arc::new(Mutex::new(Responder::new(i.mac)));
    let mcast = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).ok();
    // On the main runtime: a flood keeps the responder busy, never the failure detector's thread.
    let receiver = main.spawn(receive(
        i.name.clone(),
        Arc::clone(&socket),
        Arc::clone(&responder),
        conflicts.clone(),
        Arc::clone(metrics),
    ));
    tracing::info!(interface = %i.name, mac = %i.mac, "answering ARP/NDP");
    Ok(IfaceRt {
        name: i.name.clone(),
        index: i.index,
        carrier: i.carrier,
        receiver,
        socket,
        responder,
        mcast,
        joined: BTreeSet::new(),
    })
}

impl Announcer for L2Announcer {
    fn name(&self) -> &'static str {
        "l2"
    }

    fn update(&mut self, changes: &[announce::Change]) {
        if !changes.is_empty() {
            let _ = self.services.send(changes.iter().cloned().collect());
        }
    }
}

/// Starts layer 2 mode: checks host settings, opens the sockets, and spawns
/// the task that runs membership, election and responders.
pub async fn start(opts: Options, metrics: Arc<Metrics>) -> Result<L2Announcer, L2Error> {
    let me = opts
        .members
        .iter()
        .find(|m| m.name == opts.node)
        .cloned()
        .ok_or_else(|| L2Error::NotAMember(opts.node.clone()))?;
    let named = wanted_interfaces(&opts.advertisements);
    let ifaces = iface::announcing(&named);
    if ifaces.is_empty() {
        return Err(L2Error::NoInterface(named.describe()));
    }
    let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    crate::host::prepare_arp(&names)?;
    let main = tokio::runtime::Handle::current();
    // Links an earlier run left (it was killed) would take in traffic for
    // groups another node owns now.
    vmac::remove_all_logged("left by an earlier run").await;
    let (vmac_worker, vmac_rx) = vmac::Worker::spawn(&main);
    let mut rts = Vec::new();
    // Bounded: a flood of forged answers must not grow memory; one conflict
    // per VIP already makes the owner re-assert.
    let (conflict_tx, conflict_rx) = mpsc::channel(CONFLICT_QUEUE);
    for i in &ifaces {
        rts.push(open_iface(i, &conflict_tx, &metrics, &main)?);
    }
    let udp = std::net::UdpSocket::bind(me.address)
        .and_then(|u| u.set_nonblocking(true).map(|()| u))
        .map_err(|source| L2Error::Socket {
            what: format!("the membership socket on {}", me.address),
            source,
        })?;
    let (iface_tx, iface_rx) = mpsc::channel(IFACE_EVENTS);
    let (names_tx, names_rx) = tokio::sync::watch::channel(named.clone());
    tokio::spawn(watch_interfaces(
        names_rx,
        ifaces
            .iter()
            .map(|i| (i.name.clone(), i.index, i.carrier))
            .collect(),
        iface_tx,
    ));
    let local = crate::host::LocalRouteWorker::spawn();
    let mut membership = Membership::new(
        &me.name,
        opts.members.iter().map(|m| (m.name.clone(), m.address)),
        opts.timing,
    );
    if !opts.keys.enabled() {
        tracing::warn!("layer 2 heartbeats are not authenticated: any host that can send UDP to the membership port can prevent a failover or claim VIPs; set a key (docs/l2.md, \"Heartbeat keys\")");
    }
    // The run id orders this run after every earlier one (replays of an older run are refused).
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    membership.set_auth(opts.keys.clone(), run);
    membership.set_fast(0, opts.fast);
    for r in ferrolb_l2::auth::Refusal::ALL {
        metrics
            .l2_heartbeats_refused
            .get_or_create(&crate::metrics::RefusalLabels {
                reason: r.reason().into(),
            })
            .inc_by(0);
    }
    let (services_tx, services_rx) = mpsc::unbounded_channel();
    let (members_tx, members_rx) = tokio::sync::watch::channel(None);
    let (settings_tx, settings_rx) = tokio::sync::watch::channel(None);
    let (owned_tx, owned) = tokio::sync::watch::channel(BTreeSet::new());
    let (reports, _) = tokio::sync::broadcast::channel(CONFLICT_REPORTS);
    let reports2 = reports.clone();
    let (fallbacks, _) = tokio::sync::broadcast::channel(CONFLICT_REPORTS);
    let fallbacks2 = fallbacks.clone();

    let thread_metrics = Arc::clone(&metrics);
    // The failure detector gets an OS thread and runtime of its own: whatever
    // the responders, the forwarder or the API watches do on the main runtime
    // (a flood, a slow netlink), heartbeats go out and come in on time.
    std::thread::Builder::new()
        .name("ferrolb-l2".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the layer 2 runtime; layer 2 mode stopped");
                    return;
                }
            };
            rt.block_on(async move {
                let udp = match UdpSocket::from_std(udp) {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!(error = %e, "membership socket unusable; layer 2 mode stopped");
                        return;
                    }
                };
                let runner = Runner {
                    opts,
                    me: me.name,
                    membership,
                    udp,
                    ifaces: rts,
                    services: Table::default(),
                    groups: Arc::new(Vec::new()),
                    group_of: BTreeMap::new(),
                    group_mac: BTreeMap::new(),
                    collisions: Vec::new(),
                    vmac: vmac_worker,
                    vmac_status: vmac::Statuses::new(),
                    fallback_reports: fallbacks2,
                    fallen_back: BTreeSet::new(),
                    fast_seen: 0,
                    listen_until: None,
                    network_down: false,
                    owned: BTreeMap::new(),
                    epoch: Instant::now(),
                    metrics: thread_metrics,
                    lost_owner_at: None,
                    conflict_tx,
                    isolated: false,
                    local,
                    owned_tx,
                    refused_warn: ferrolb_ops::RateLimit::new(Duration::from_secs(60)),
                    send_warn: ferrolb_ops::RateLimit::new(Duration::from_secs(60)),
                    conflict_reports: reports2,
                    main,
                    run,
                    names: names_tx,
                };
                runner
                    .run(
                        Inputs {
                            services: services_rx,
                            members: members_rx,
                            settings: settings_rx,
                            conflicts: conflict_rx,
                            iface_events: iface_rx,
                            vmac: vmac_rx,
                        },
                    )
                    .await;
            });
        })
        .map_err(|source| L2Error::Socket {
            what: "the layer 2 thread".into(),
            source,
        })?;
    Ok(L2Announcer {
        services: services_tx,
        members: std::sync::Arc::new(members_tx),
        owned,
        conflicts: reports,
        fallbacks,
        settings: std::sync::Arc::new(settings_tx),
    })
}

/// Answers per second one asking MAC gets; a host re-checking a neighbour
/// asks a few times a second at most, a flood far more.
const ANSWERS_PER_SOURCE: u64 = 50;
/// The burst one asking MAC may have (a client's probes after a failover).
const ANSWER_BURST: u64 = 20;

/// Answers frames on one interface until its socket fails. Nothing in the
/// loop allocates: the frame buffer, the answer and the counters are made
/// once, so a flood costs CPU per frame and never memory.
async fn receive(
    name: String,
    socket: Arc<PacketSocket>,
    responder: Arc<Mutex<Responder>>,
    conflicts: mpsc::Sender<(IpAddr, ferrolb_l2::wire::Mac)>,
    metrics: Arc<Metrics>,
) {
    let labels = IfaceLabels {
        interface: name.clone(),
    };
    let requests = metrics.l2_requests.get_or_create(&labels).clone();
    let answers = metrics.l2_answers.get_or_create(&labels).clone();
    let malformed = metrics.l2_malformed.get_or_create(&labels).clone();
    let limited = metrics.l2_limited.get_or_create(&labels).clone();
    let conflicts_dropped = metrics
        .queue_dropped
        .get_or_create(&crate::metrics::QueueLabels {
            queue: "l2_conflicts".into(),
        })
        .clone();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ std::process::id() as u64;
    let mut limiter = SourceLimiter::new(ANSWERS_PER_SOURCE, ANSWER_BURST, seed);
    let epoch = Instant::now();
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(interface = %name, error = %e, "packet socket failed; no longer answering here");
                return;
            }
        };
        let outcome = responder.lock().expect("lock poisoned").handle(&buf[..n]);
        match outcome {
            Ok(o) => {
                if o.asked {
                    requests.inc();
                }
                if let Some(reply) = o.reply {
                    // Milliseconds since start, never 0 (0 marks an unused slot).
                    let now = epoch.elapsed().as_millis() as u64 + 1;
                    if !limiter.allow(o.from, now) {
                        limited.inc();
                    } else if socket.send(&reply).await.is_ok() {
                        answers.inc();
                    }
                }
                if let Some(c) = o.conflict {
                    if conflicts.try_send(c).is_err() {
                        conflicts_dropped.inc();
                    }
                }
            }
            Err(_) => {
                malformed.inc();
            }
        }
    }
}

/// Interface changes the watcher reports to the failure detector's thread.
#[derive(Debug)]
enum IfaceEvent {
    /// Link (up and carrier) of an interface in use changed.
    Carrier(String, bool),
    /// An interface in use vanished or changed its index.
    Gone(String),
    /// A new announcing interface, its ARP sysctls already set.
    New(iface::Iface),
}

/// Interface events waiting for the failure detector.
const IFACE_EVENTS: usize = 16;

/// Rechecks carrier every 100 ms and the interface list every second (and
/// at once after a link change), so interfaces that appear or vanish are
/// picked up without a restart. An interface set down stays in use, its
/// link down, until it vanishes: its return is then seen within 100 ms,
/// not at the next look at the list. Runs
/// on the main runtime: /sys reads and sysctl writes never hold up a
/// heartbeat.
async fn watch_interfaces(
    mut names: tokio::sync::watch::Receiver<iface::Wanted>,
    start: Vec<(String, u32, bool)>,
    events: mpsc::Sender<IfaceEvent>,
) {
    let mut named = names.borrow_and_update().clone();
    // name -> (index, link)
    let mut known: BTreeMap<String, (u32, bool)> =
        start.into_iter().map(|(n, i, c)| (n, (i, c))).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u64 = 0;
    loop {
        // A reconfiguration that names other interfaces is applied at once.
        let mut renamed = false;
        tokio::select! {
            _ = tick.tick() => {}
            changed = names.changed() => {
                if changed.is_err() {
                    return;
                }
                named = names.borrow_and_update().clone();
                renamed = true;
            }
        }
        ticks += 1;
        let mut flipped = false;
        for (name, (_, link)) in known.iter_mut() {
            let now = iface::read_iface(name).is_some_and(|x| x.up && x.carrier);
            if now != *link {
                if now {
                    tracing::info!(interface = %name, "link up");
                } else {
                    tracing::warn!(interface = %name, "link down");
                }
                *link = now;
                flipped = true;
                if events
                    .send(IfaceEvent::Carrier(name.clone(), now))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if !renamed && !flipped && !ticks.is_multiple_of(10) {
            continue;
        }
        let present: Vec<iface::Iface> = iface::list()
            .into_iter()
            .filter(|i| iface::candidate(i, &named))
            .collect();
        let gone: Vec<String> = known
            .iter()
            .filter(|(name, (index, _))| {
                !present
                    .iter()
                    .any(|n| n.name == **name && n.index == *index)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            tracing::warn!(interface = %name, "interface gone or no longer named by `l2[].interfaces`; no longer answering on it");
            known.remove(&name);
            if events.send(IfaceEvent::Gone(name)).await.is_err() {
                return;
            }
        }
        for n in present.into_iter().filter(|i| i.up) {
            if known.contains_key(&n.name) {
                continue;
            }
            if let Err(e) = crate::host::prepare_arp(std::slice::from_ref(&n.name)) {
                tracing::error!(interface = %n.name, error = %e, "new interface not used");
                continue;
            }
            known.insert(n.name.clone(), (n.index, n.up && n.carrier));
            if events.send(IfaceEvent::New(n)).await.is_err() {
                return;
            }
        }
    }
}

struct Runner {
    opts: Options,
    me: String,
    membership: Membership,
    udp: UdpSocket,
    ifaces: Vec<IfaceRt>,
    services: Table,
    /// The services as election groups (recomputed when they change).
    groups: Arc<Vec<groups::Group>>,
    /// Service key to its group's key, for groups with a virtual MAC.
    group_of: BTreeMap<String, String>,
    /// Group key to its virtual MAC and identity (groups with `virtualMac`).
    group_mac: BTreeMap<String, (ferrolb_l2::wire::Mac, IpAddr)>,
    /// Virtual-MAC collisions already warned about.
    collisions: Vec<ferrolb_l2::vmac::Collision>,
    /// Makes and removes the virtual-MAC links, off this thread.
    vmac: vmac::Worker,
    /// The worker's latest report.
    vmac_status: vmac::Statuses,
    /// Virtual MACs that could not be made, for whoever reports them (Kubernetes Events).
    fallback_reports: tokio::sync::broadcast::Sender<FallbackReport>,
    /// Links already reported as failed (reported again if they fail anew).
    fallen_back: BTreeSet<(u32, ferrolb_l2::wire::Mac)>,
    /// Tick-path verdict downs already counted in the metric.
    fast_seen: u64,
    /// Until when this node listens after a link came back.
    listen_until: Option<Instant>,
    /// The last heartbeats could not be sent: the network is down here.
    network_down: bool,
    owned: BTreeMap<String, Owned>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// When a member that owned something was declared down (for the failover histogram).
    lost_owner_at: Option<Instant>,
    conflict_tx: mpsc::Sender<(IpAddr, ferrolb_l2::wire::Mac)>,
    /// No peer heard while peers are configured.
    isolated: bool,
    /// Makes VIPs local on this node, off this thread (netlink).
    local: crate::host::LocalRouteWorker,
    /// The main runtime, where the responders run.
    main: tokio::runtime::Handle,
    /// Publishes the owned service keys.
    owned_tx: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// One warning a minute about refused datagrams, naming the source.
    refused_warn: ferrolb_ops::RateLimit,
    /// One error a minute about heartbeats that could not be sent.
    send_warn: ferrolb_ops::RateLimit,
    /// Re-assertions after a conflict, for whoever reports them (Kubernetes Events).
    conflict_reports: tokio::sync::broadcast::Sender<ConflictReport>,
    /// This run's id in signed heartbeats (kept when the keys change).
    run: u64,
    /// The interfaces the advertisements name, for the interface watcher.
    names: tokio::sync::watch::Sender<iface::Wanted>,
}

/// What the layer 2 thread listens to.
struct Inputs {
    services: mpsc::UnboundedReceiver<Arc<[announce::Change]>>,
    members: tokio::sync::watch::Receiver<Option<Vec<Member>>>,
    settings: tokio::sync::watch::Receiver<Option<Settings>>,
    conflicts: mpsc::Receiver<(IpAddr, ferrolb_l2::wire::Mac)>,
    iface_events: mpsc::Receiver<IfaceEvent>,
    vmac: tokio::sync::watch::Receiver<vmac::Statuses>,
}

impl Runner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn run(mut self, inputs: Inputs) {
        let Inputs {
            mut services,
            mut members,
            mut settings,
            mut conflicts,
            mut iface_events,
            vmac: mut vmac_status,
        } = inputs;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                _ = tick.tick() => self.on_tick().await,
                r = self.udp.recv_from(&mut buf) => {
                    if let Err(e) = &r {
                        // Never spin on a failing socket; heartbeats go on from the tick.
                        tracing::debug!(error = %e, "membership socket receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if let Ok((n, from)) = r {
                        let now = self.now_ms();
                        match self.membership.receive(now, from, &buf[..n]) {
                            Ok(Some(Change::Up(name))) => {
                                tracing::info!(member = %name, "member up");
                                self.elect().await;
                            }
                            Ok(Some(Change::Down(name))) => {
                                tracing::warn!(member = %name, "member down (its monitors stopped hearing it)");
                                self.count_fast_detections();
                                self.lost_owner_at = Some(Instant::now());
                                self.elect().await;
                            }
                            Ok(_) => {}
                            Err(why) => {
                                self.metrics
                                    .l2_heartbeats_refused
                                    .get_or_create(&crate::metrics::RefusalLabels { reason: why.reason().into() })
                                    .inc();
                                if let Some(held) = self.refused_warn.allow(std::time::Instant::now()) {
                                    tracing::warn!(%from, reason = why.reason(), refused_not_logged = held, "refused a datagram on the membership port: {why}");
                                }
                            }
                        }
                    }
                }
                changed = members.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(members) = members.borrow_and_update().clone() else { continue };
                    {
                        let changes = self.membership.set_members(members.iter().map(|m| (m.name.clone(), m.address)));
                        for c in &changes {
                            if let Change::Down(name) = c {
                                tracing::info!(member = %name, "member left");
                            }
                        }
                        tracing::info!(members = members.len(), "member list updated");
                        self.opts.members = members;
                        self.elect().await;
                    }
                }
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(s) = settings.borrow_and_update().clone() else { continue };
                    self.on_settings(s).await;
                }
                batch = services.recv() => {
                    let Some(batch) = batch else { return };
                    // Everything queued meanwhile, as one batch (so each entry's
                    // "before" is the one before the first change).
                    let mut all: Vec<announce::Change> = batch.to_vec();
                    while let Ok(more) = services.try_recv() {
                        all.extend(more.iter().cloned());
                    }
                    let touched = self.services.apply(&all);
                    if !touched.is_empty() {
                        self.groups = Arc::new(groups::groups(self.services.iter()));
                        self.assign_vmacs();
                    }
                    if announce::addresses_moved(&touched) {
                        self.local.want(self.services.iter().flat_map(|s| s.vips.iter().copied()).collect());
                    }
                    if !touched.is_empty() {
                        self.elect().await;
                    }
                }
                Some((vip, mac)) = conflicts.recv() => self.on_conflict(vip, mac),
                Some(ev) = iface_events.recv() => self.on_iface(ev),
                changed = vmac_status.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let st = vmac_status.borrow_and_update().clone();
                    self.on_vmac_status(st).await;
                }
            }
        }
    }

    /// Another MAC answered or announced a VIP this node owns: re-assert it
    /// (at most once a second per service, so a flood of forged answers is
    /// not answered by a flood of announcements), count it, and warn.
    fn on_conflict(&mut self, vip: IpAddr, mac: ferrolb_l2::wire::Mac) {
        self.metrics
            .l2_duplicates
            .get_or_create(&crate::metrics::VipLabels {
                vip: vip.to_string(),
            })
            .inc();
        let now = Instant::now();
        let Some((key, o)) = self.owned.iter_mut().find(|(_, o)| o.vips.contains(&vip)) else {
            return;
        };
        if o.reasserted
            .is_some_and(|t| now.duration_since(t) < REASSERT_EVERY)
        {
            return;
        }
        o.reasserted = Some(now);
        o.next = now;
        tracing::warn!(%vip, other = %mac, service = %key, "another MAC answers for a VIP this node owns; re-asserting");
        // Kubernetes mode turns this into a Warning Event; without a subscriber it goes nowhere.
        let _ = self.conflict_reports.send((key.clone(), vip, mac));
    }

    /// A reconfiguration: new advertisements, timing, schedule or keys.
    /// Owned services stay owned unless the new advertisements make another
    /// node their owner (the election decides, as for any change).
    async fn on_settings(&mut self, s: Settings) {
        let named = wanted_interfaces(&s.advertisements);
        let mut what: Vec<&str> = Vec::new();
        self.names.send_if_modified(|n| {
            let changed = *n != named;
            *n = named;
            changed
        });
        if s.timing != self.membership.timing() {
            tracing::info!(
                heartbeat_ms = s.timing.interval_ms,
                dead_after_ms = s.timing.dead_after_ms,
                "failure detector timing changed"
            );
            self.membership.set_timing(self.now_ms(), s.timing);
            what.push("timing");
        }
        if s.fast != self.membership.fast() {
            tracing::info!(fast = ?s.fast, "fast detection changed");
            self.membership.set_fast(self.now_ms(), s.fast);
            what.push("fast detection");
        }
        if s.keys.ids() != self.opts.keys.ids() {
            if s.keys.enabled() {
                tracing::info!(keys = ?s.keys, "heartbeat keys changed");
            } else {
                tracing::warn!("layer 2 heartbeats are no longer authenticated: any host that can send UDP to the membership port can prevent a failover or claim VIPs");
            }
            self.membership.set_auth(s.keys.clone(), self.run);
            what.push("keys");
        }
        if s.advertisements != self.opts.advertisements {
            what.push("advertisements");
        }
        if s.refresh != self.opts.refresh || s.repeats != self.opts.repeats {
            what.push("announcement schedule");
        }
        if what.is_empty() {
            return;
        }
        self.opts.keys = s.keys;
        self.opts.timing = s.timing;
        self.opts.refresh = s.refresh;
        self.opts.repeats = s.repeats;
        self.opts.advertisements = s.advertisements;
        tracing::info!(changed = ?what, "layer 2 settings applied");
        self.assign_vmacs();
        self.apply_owned();
        self.elect().await;
    }

    fn claims(&self) -> Vec<(String, u64)> {
        self.owned
            .iter()
            .map(|(k, o)| (k.clone(), o.since.elapsed().as_millis() as u64))
            .collect()
    }

    /// What the interface watcher saw.
    fn on_iface(&mut self, ev: IfaceEvent) {
        match ev {
            IfaceEvent::Carrier(name, carrier) => {
                if let Some(i) = self.ifaces.iter_mut().find(|i| i.name == name) {
                    i.carrier = carrier;
                }
                if carrier {
                    self.relisten();
                }
            }
            IfaceEvent::Gone(name) => {
                let before = self.ifaces.len();
                self.ifaces.retain(|i| i.name != name);
                if self.ifaces.len() != before {
                    self.apply_owned();
                }
            }
            IfaceEvent::New(n) => {
                self.relisten();
                self.ifaces.retain(|i| i.name != n.name);
                match open_iface(&n, &self.conflict_tx, &self.metrics, &self.main) {
                    Ok(rt) => {
                        self.ifaces.push(rt);
                        self.apply_owned();
                    }
                    Err(e) => {
                        tracing::error!(interface = %n.name, error = %e, "new interface not used")
                    }
                }
            }
        }
    }

    /// Moves the detector's count of verdict downs to the metric.
    fn count_fast_detections(&mut self) {
        let fast = self.membership.fast_downs();
        if fast > self.fast_seen {
            self.metrics
                .l2_fast_detections
                .inc_by(fast - self.fast_seen);
            self.fast_seen = fast;
        }
    }

    /// A link came back: this node heard nothing while it was down, so, as
    /// at start, it listens for `deadAfter` before it may take anything
    /// (otherwise it takes back, on a stale view, what a peer took over
    /// while the link was down: a second move for a short link flap).
    fn relisten(&mut self) {
        let until = Instant::now() + Duration::from_millis(self.membership.timing().dead_after_ms);
        self.listen_until = Some(self.listen_until.map_or(until, |u| u.max(until)));
    }

    /// Whether this node can announce at all: some announcing interface has
    /// a link, it is not listening after a link came back, and its last
    /// heartbeats did not fail for want of a network (a link that went down
    /// is seen by the kernel before the watcher's next look).
    fn can_announce(&self) -> bool {
        let now = Instant::now();
        self.ifaces.iter().any(|i| i.carrier)
            && self.listen_until.is_none_or(|u| now >= u)
            && !self.network_down
    }

    async fn on_tick(&mut self) {
        let now = self.now_ms();
        // Heard by nobody while peers exist: maybe the others are dead, maybe this node is cut off.
        // Keep serving, but make the claims fresh so that, when the network heals, a peer that took
        // over meanwhile keeps the VIPs (no flap-back to the node that was cut off).
        let isolated = self.opts.members.len() > 1
            && self.membership.live().len() == 1
            && self.membership.settled(now);
        if isolated != self.isolated {
            if isolated {
                tracing::warn!("no member heard: isolated or alone; yielding to any peer that holds a VIP when the network heals");
            }
            self.isolated = isolated;
        }
        if isolated {
            let t = Instant::now();
            for o in self.owned.values_mut() {
                o.since = t;
            }
        }
        // Peers leave a node in standby out of their elections, so a VIP is
        // never left to a node that would not take it.
        let standby = !self.can_announce();
        self.membership.set_standby(now, standby);
        let claims = self.claims();
        let (sends, changes) = self.membership.tick(now, &claims);
        let mut sent_any = None;
        for (to, bytes) in sends {
            let r = self.udp.send_to(&bytes, to).await;
            // ENETDOWN, ENETUNREACH: this node is cut off, whatever the watcher saw yet.
            let down = matches!(&r, Err(e) if matches!(e.raw_os_error(), Some(100) | Some(101)));
            sent_any = Some(sent_any.unwrap_or(false) || !down);
            if let Err(e) = r {
                // Unsent heartbeats make the peers declare this node down:
                // say so (a heartbeat is one datagram, so a node claiming
                // thousands of Services cannot send it: docs/l2.md).
                if let Some(held) = self.send_warn.allow(std::time::Instant::now()) {
                    tracing::error!(%to, bytes = bytes.len(), claims = claims.len(), error = %e, repeats_not_logged = held, "cannot send a heartbeat; the other members will declare this node down");
                }
            }
        }
        if let Some(ok) = sent_any {
            if !ok && !self.network_down {
                tracing::warn!("heartbeats fail for want of a network: not taking anything until they go out again");
            }
            if ok && self.network_down {
                // Back: listen first, as after a link change.
                self.relisten();
            }
            self.network_down = !ok;
        }
        let mut any = false;
        self.count_fast_detections();
        for c in changes {
            if let Change::Down(name) = c {
                tracing::warn!(member = %name, "member down");
                self.lost_owner_at = Some(Instant::now());
                any = true;
            }
        }
        if any || self.membership.settled(now) {
            self.elect().await;
        }
        self.announce_due().await;
    }

    /// The live members that may announce a group the entries `covering`
    /// (indices: [`covering`]) cover: their node selectors, and this node
    /// only with a link up. The same for every group the same entries
    /// cover (in practice, every group of a pool), so it is computed once
    /// per set of entries and election pass.
    fn eligible_for(&self, covering: &[usize], live: &[&str]) -> Vec<String> {
        let ads: Vec<&L2Advertisement> = covering
            .iter()
            .filter_map(|i| self.opts.advertisements.get(*i))
            .collect();
        if ads.is_empty() {
            return Vec::new();
        }
        let me_ok = self.can_announce() && self.membership.ready(self.now_ms());
        live.iter()
            .filter(|name| {
                if **name == self.me {
                    me_ok
                } else {
                    !self.membership.in_standby(name)
                }
            })
            .filter(|name| {
                let Some(m) = self.opts.members.iter().find(|m| m.name == **name) else {
                    return false;
                };
                let mut labels = m.labels.clone();
                labels.insert("kubernetes.io/hostname".into(), m.name.clone());
                ads.iter()
                    .any(|a| a.node_selector.as_ref().is_none_or(|s| s.matches(&labels)))
            })
            .map(|n| n.to_string())
            .collect()
    }

    /// This node's labels as node selectors see them (its member labels
    /// and `kubernetes.io/hostname`).
    fn my_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self
            .opts
            .members
            .iter()
            .find(|m| m.name == self.me)
            .map(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/hostname".into(), self.me.clone());
        labels
    }

    async fn elect(&mut self) {
        if !self.membership.settled(self.now_ms()) {
            return;
        }
        let now = self.now_ms();
        // Indexed once per pass: the claims by service, the candidates by pool.
        let mut peer_claims: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (n, k, h) in self.membership.peer_claims(now) {
            peer_claims
                .entry(k.to_string())
                .or_default()
                .push((n.to_string(), h));
        }
        let mine: BTreeMap<String, u64> = self.claims().into_iter().collect();
        let live: Vec<String> = self
            .membership
            .live()
            .into_iter()
            .map(str::to_string)
            .collect();
        let live_refs: Vec<&str> = live.iter().map(String::as_str).collect();
        let mut by_entries: BTreeMap<Vec<usize>, Vec<String>> = BTreeMap::new();
        let mut changed = false;
        let groups = Arc::clone(&self.groups);
        for g in groups.iter() {
            let entries = covering(&self.opts.advertisements, g);
            if !by_entries.contains_key(&entries) {
                let e = self.eligible_for(&entries, &live_refs);
                by_entries.insert(entries.clone(), e);
            }
            let candidates: Vec<&str> = by_entries[&entries].iter().map(String::as_str).collect();
            let refs = g.eligible(&candidates);
            // A node's claim on the group: its longest-held claim on a member
            // (every member's, for a group of one: the claim as before).
            let mut held: BTreeMap<&str, u64> = BTreeMap::new();
            for s in &g.services {
                for (n, h) in peer_claims.get(&s.key).into_iter().flatten() {
                    let e = held.entry(n.as_str()).or_insert(0);
                    *e = (*e).max(*h);
                }
                if let Some(h) = mine.get(&s.key) {
                    let e = held.entry(self.me.as_str()).or_insert(0);
                    *e = (*e).max(*h);
                }
            }
            let claims: Vec<Claim<'_>> = held
                .iter()
                .map(|(n, h)| Claim {
                    node: n,
                    held_ms: *h,
                })
                .collect();
            let owner = election::owner(&g.key, &refs, &claims).map(str::to_string);
            let mine_now = owner.as_deref() == Some(self.me.as_str());
            for s in &g.services {
                let i_own = self.owned.contains_key(&s.key);
                if mine_now && !i_own {
                    let mac = self.group_mac.get(&g.key).map(|(m, _)| *m);
                    tracing::info!(service = %s.key, vips = ?s.vips, group = %g.key, virtual_mac = ?mac, "taking over: announcing");
                    let pending = self.links_pending(mac);
                    self.owned.insert(
                        s.key.clone(),
                        Owned {
                            mac,
                            pending,
                            since: Instant::now(),
                            taken: Instant::now(),
                            vips: s.vips.clone(),
                            pool: s.pool.clone(),
                            labels: Arc::clone(&s.labels),
                            next: Instant::now(),
                            sent: 0,
                            reasserted: None,
                        },
                    );
                    self.metrics.l2_ownership_changes.inc();
                    changed = true;
                } else if mine_now {
                    // Still ours, but the entry may have changed under us (a new
                    // address, new labels): answer and announce what it is now,
                    // or the old address would be answered until a failover.
                    let o = self.owned.get_mut(&s.key).expect("owned");
                    if o.vips != s.vips {
                        tracing::info!(service = %s.key, vips = ?s.vips, was = ?o.vips, "addresses changed: announcing the new ones");
                        o.vips = s.vips.clone();
                        o.announce_from(Instant::now());
                        changed = true;
                    }
                    if o.pool != s.pool || o.labels != s.labels {
                        o.pool = s.pool.clone();
                        o.labels = Arc::clone(&s.labels);
                        changed = true;
                    }
                } else if i_own {
                    tracing::info!(service = %s.key, new_owner = ?owner, group = %g.key, "giving up: no longer answering");
                    self.owned.remove(&s.key);
                    self.metrics.l2_ownership_changes.inc();
                    changed = true;
                }
            }
        }
        // Services that left the configuration are given up too.
        let before = self.owned.len();
        let services = &self.services;
        self.owned.retain(|k, _| services.get(k).is_some());
        changed |= before != self.owned.len();
        if changed {
            self.apply_owned();
            self.announce_due().await;
        }
    }

    /// Points every responder at the owned VIPs and joins their IPv6 groups.
    fn apply_owned(&mut self) {
        let keys: BTreeSet<String> = self.owned.keys().cloned().collect();
        self.owned_tx.send_if_modified(|o| {
            let changed = *o != keys;
            *o = keys;
            changed
        });
        let vips: Vec<IpAddr> = self
            .owned
            .values()
            .flat_map(|o| o.vips.iter().copied())
            .collect();
        let groups: BTreeSet<Ipv6Addr> = vips
            .iter()
            .filter_map(|v| {
                if let IpAddr::V6(a) = v {
                    Some(solicited_node(*a))
                } else {
                    None
                }
            })
            .collect();
        let status = &self.vmac_status;
        let labels = self.my_labels();
        let ads = &self.opts.advertisements;
        for i in &mut self.ifaces {
            let mut r = i.responder.lock().expect("lock poisoned");
            let node_mac = r.mac();
            // Each VIP with the MAC it answers with here: its virtual MAC once
            // the link is up, the node's if it failed, not at all while pending.
            let answered: Vec<(IpAddr, ferrolb_l2::wire::Mac)> = self
                .owned
                .values()
                .filter(|o| answers_on(ads, &labels, &o.pool, &o.labels, &i.name))
                .flat_map(|o| {
                    let mac = match o.mac {
                        None => Some(node_mac),
                        Some(m) => match status.get(&(i.index, m)) {
                            Some(vmac::Status::Ready) => Some(m),
                            Some(vmac::Status::Failed(_)) => Some(node_mac),
                            None => None,
                        },
                    };
                    o.vips.iter().filter_map(move |v| mac.map(|m| (*v, m)))
                })
                .collect();
            r.set_owned_as(answered);
            drop(r);
            if let Some(m) = &i.mcast {
                for g in groups.difference(&i.joined) {
                    if let Err(e) = m.join_multicast_v6(g, i.index) {
                        tracing::warn!(interface = %i.name, group = %g, error = %e, "cannot join the solicited-node group");
                    }
                }
                for g in i.joined.difference(&groups) {
                    let _ = m.leave_multicast_v6(g, i.index);
                }
            }
            i.joined = groups.clone();
        }
        self.want_links();
    }

    /// Whether the links of virtual MAC `mac` are still being made on some
    /// interface (never, without one).
    fn links_pending(&self, mac: Option<ferrolb_l2::wire::Mac>) -> bool {
        mac.is_some_and(|m| {
            self.ifaces
                .iter()
                .any(|i| !self.vmac_status.contains_key(&(i.index, m)))
        })
    }

    /// Tells the worker which virtual-MAC links this node needs: one per
    /// owned group with a virtual MAC, per announcing interface.
    fn want_links(&self) {
        let mut wanted = vmac::Wanted::new();
        for (key, o) in &self.owned {
            let Some(m) = o.mac else { continue };
            let identity = self
                .group_of
                .get(key)
                .and_then(|g| self.group_mac.get(g).map(|(_, id)| (g, *id)));
            let alias = match identity {
                Some((g, id)) => ferrolb_l2::vmac::link_alias(id, g),
                None => ferrolb_l2::vmac::LINK_ALIAS_PREFIX.to_string(),
            };
            for i in &self.ifaces {
                wanted.entry((i.index, m)).or_insert_with(|| vmac::Want {
                    name: ferrolb_l2::vmac::link_name(m, i.index),
                    alias: alias.clone(),
                });
            }
        }
        self.vmac.want(wanted);
    }

    /// Derives the virtual MACs of the groups whose pool an advertisement
    /// with `virtualMac` covers, warns about new collisions, and moves owned
    /// services whose MAC changed (turned on or off live) to the new one.
    fn assign_vmacs(&mut self) {
        let ads = &self.opts.advertisements;
        let wants = |g: &groups::Group| covering(ads, g).into_iter().any(|i| ads[i].virtual_mac);
        let mut group_of = BTreeMap::new();
        let mut identities: Vec<(&str, IpAddr)> = Vec::new();
        // Only groups that want a virtual MAC are indexed: with the feature
        // off (the default), a Service change costs no copy of every key.
        for g in self.groups.iter() {
            if let (true, Some(id)) = (wants(g), g.identity()) {
                for s in &g.services {
                    group_of.insert(s.key.clone(), g.key.clone());
                }
                identities.push((g.key.as_str(), id));
            }
        }
        let ids: BTreeMap<&str, IpAddr> = identities.iter().copied().collect();
        let a = ferrolb_l2::vmac::assign(identities.iter().copied());
        for c in &a.collisions {
            if !self.collisions.contains(c) {
                tracing::warn!(mac = %c.mac, kept = %c.kept, refused = %c.refused, "two VIP groups derive the same virtual MAC; the second answers with the node MAC (change one of their addresses to give it its own)");
            }
        }
        self.collisions = a.collisions;
        self.group_mac = a
            .macs
            .into_iter()
            .filter_map(|(k, m)| ids.get(k.as_str()).map(|id| (k.clone(), (m, *id))))
            .collect();
        self.group_of = group_of;
        let now = Instant::now();
        let mut moved = false;
        let keys: Vec<String> = self.owned.keys().cloned().collect();
        for k in keys {
            let mac = self
                .group_of
                .get(&k)
                .and_then(|g| self.group_mac.get(g))
                .map(|(m, _)| *m);
            let pending = self.links_pending(mac);
            if let Some(o) = self.owned.get_mut(&k) {
                if o.mac != mac {
                    tracing::info!(service = %k, virtual_mac = ?mac, "the service's MAC changed; announcing it");
                    o.mac = mac;
                    o.pending = pending;
                    o.announce_from(now);
                    moved = true;
                }
            }
        }
        if moved {
            self.apply_owned();
        }
    }

    /// The worker made or failed links: answer and announce the groups that
    /// were waiting, and report the failures.
    async fn on_vmac_status(&mut self, status: vmac::Statuses) {
        self.vmac_status = status;
        let ready = self
            .vmac_status
            .values()
            .filter(|s| **s == vmac::Status::Ready)
            .count();
        self.metrics.l2_virtual_macs.set(ready as i64);
        let failed: Vec<((u32, ferrolb_l2::wire::Mac), String)> = self
            .vmac_status
            .iter()
            .filter_map(|(k, s)| match s {
                vmac::Status::Failed(why) => Some((*k, why.clone())),
                vmac::Status::Ready => None,
            })
            .collect();
        for (k, why) in &failed {
            if self.fallen_back.contains(k) {
                continue;
            }
            let iface = self
                .ifaces
                .iter()
                .find(|i| i.index == k.0)
                .map(|i| i.name.clone())
                .unwrap_or_else(|| k.0.to_string());
            let services: Vec<&String> = self
                .owned
                .iter()
                .filter(|(_, o)| o.mac == Some(k.1))
                .map(|(key, _)| key)
                .collect();
            tracing::error!(mac = %k.1, interface = %iface, services = ?services, reason = %why, "cannot hold the virtual MAC; answering with the node MAC, so clients must update their neighbour entry on failover");
            self.metrics.l2_virtual_mac_fallbacks.inc();
            for s in services {
                let _ = self.fallback_reports.send((s.clone(), k.1, why.clone()));
            }
        }
        self.fallen_back = failed.into_iter().map(|(k, _)| k).collect();
        let now = Instant::now();
        let macs: Vec<(String, Option<ferrolb_l2::wire::Mac>)> =
            self.owned.iter().map(|(k, o)| (k.clone(), o.mac)).collect();
        for (k, mac) in macs {
            let pending = self.links_pending(mac);
            if let Some(o) = self.owned.get_mut(&k) {
                if o.pending && !pending {
                    // Its links are up (or failed to the node MAC): announce from now.
                    o.announce_from(now);
                }
                o.pending = pending;
            }
        }
        self.apply_owned();
        self.announce_due().await;
    }

    /// Sends the announcements that are due.
    async fn announce_due(&mut self) {
        let now = Instant::now();
        let mut frames = Vec::new();
        for o in self.owned.values_mut() {
            if o.next > now || o.pending {
                continue;
            }
            frames.extend(
                o.vips
                    .iter()
                    .map(|v| (*v, o.pool.clone(), Arc::clone(&o.labels))),
            );
            o.sent += 1;
            o.next = match self.opts.repeats.get(o.sent - 1) {
                Some(offset) => o.taken + *offset,
                // A disabled refresh is a day away: in effect never, without a special case.
                None => {
                    now + if self.opts.refresh.is_zero() {
                        Duration::from_secs(86_400)
                    } else {
                        self.opts.refresh
                    }
                }
            };
        }
        if frames.is_empty() {
            return;
        }
        if let Some(t) = self.lost_owner_at.take() {
            self.metrics
                .l2_failover_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        let labels = self.my_labels();
        for i in &self.ifaces {
            let out: Vec<ferrolb_l2::wire::FrameBuf> = {
                let r = i.responder.lock().expect("lock poisoned");
                frames
                    .iter()
                    .filter(|(_, pool, service)| {
                        answers_on(&self.opts.advertisements, &labels, pool, service, &i.name)
                    })
                    .flat_map(|(v, _, _)| r.announce(*v))
                    .collect()
            };
            for f in out {
                match i.socket.send(&f).await {
                    Ok(()) => {
                        self.metrics
                            .l2_gratuitous
                            .get_or_create(&IfaceLabels {
                                interface: i.name.clone(),
                            })
                            .inc();
                    }
                    Err(e) => {
                        tracing::warn!(interface = %i.name, error = %e, "cannot send an announcement")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod selection_tests {
    use super::*;
    use crate::announce::ServiceVips;

    fn svc(key: &str, labels: &[(&str, &str)]) -> Arc<ServiceVips> {
        Arc::new(ServiceVips {
            key: key.into(),
            pool: "vips".into(),
            vips: vec!["192.0.2.100".parse().unwrap()],
            healthy: true,
            nodes: None,
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    }

    fn ads() -> Vec<L2Advertisement> {
        ferrolb_config::Config::from_yaml(
            "pools: [{name: vips, addresses: [192.0.2.100/30]}, {name: other, addresses: [192.0.2.200/30]}]
l2:
  - {pools: [vips], interfaces: [eth0], serviceSelector: {matchLabels: {tier: edge}}}
  - {pools: [vips], interfaces: [eth1], serviceSelector: {matchLabels: {tier: core}}}
  - {pools: [other]}
",
        )
        .expect("valid")
        .l2
    }

    #[test]
    fn a_group_is_covered_by_every_entry_selecting_any_member() {
        let ads = ads();
        let group = |services: Vec<Arc<ServiceVips>>| groups::Group {
            key: services[0].key.clone(),
            services,
        };
        assert_eq!(
            covering(&ads, &group(vec![svc("a", &[("tier", "edge")])])),
            [0]
        );
        assert_eq!(
            covering(&ads, &group(vec![svc("a", &[])])),
            Vec::<usize>::new()
        );
        // Two Services sharing an address, selected by different entries:
        // one group, one owner, elected among both entries' nodes.
        let shared = group(vec![
            svc("a", &[("tier", "edge")]),
            svc("b", &[("tier", "core")]),
        ]);
        assert_eq!(covering(&ads, &shared), [0, 1]);
    }

    #[test]
    fn a_vip_is_answered_on_the_interfaces_of_the_entries_selecting_its_service() {
        let ads = ads();
        let node = BTreeMap::new();
        let edge: announce::Labels = [("tier".to_string(), "edge".to_string())].into();
        assert!(answers_on(&ads, &node, "vips", &edge, "eth0"));
        assert!(!answers_on(&ads, &node, "vips", &edge, "eth1"));
        assert!(!answers_on(
            &ads,
            &node,
            "vips",
            &Default::default(),
            "eth0"
        ));
        // An entry without a selector covers every service of its pools.
        assert!(answers_on(
            &ads,
            &node,
            "other",
            &Default::default(),
            "eth7"
        ));
    }
}
