//! Layer 2 mode: this node answers ARP/NDP for the VIPs it owns, announces
//! them when it takes them, and agrees with the other members on one owner
//! per service through UDP heartbeats, with no API server involved.
//!
//! The decisions are pure code in `ferrolb-l2` (codec, responder, election,
//! failure detector); this module owns sockets, timers and host settings.

pub mod iface;

use crate::announce::{Announcer, ServiceVips};
use crate::metrics::{IfaceLabels, Metrics};
use ferrolb_config::{L2Advertisement, Member};
use ferrolb_l2::election::{self, Claim};
use ferrolb_l2::membership::{Change, Membership, Timing};
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
    /// Periodic re-announcement of owned VIPs, so that switch FDB and client
    /// ARP ageing never leave a VIP pointing nowhere; zero disables it.
    pub refresh: Duration,
    /// Announcements are sent at once when a VIP is taken, then again at
    /// these offsets (a lost first frame is repeated quickly).
    pub repeats: Vec<Duration>,
    /// Heartbeat keys (none: unsigned heartbeats, a warning at start).
    pub keys: ferrolb_l2::auth::Keys,
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

struct Owned {
    /// Start of the claim as peers see it (made fresh while isolated).
    since: Instant,
    /// When this node took the service (the announcement schedule's origin).
    taken: Instant,
    vips: Vec<IpAddr>,
    next: Instant,
    sent: usize,
}

/// The latest services and members for the runner. Each is a whole
/// snapshot, so a watch channel keeps only the newest: a burst of API
/// changes costs one update, never a growing queue.
type Latest<T> = std::sync::Arc<tokio::sync::watch::Sender<Option<T>>>;

/// The handle standalone and Kubernetes mode talk to (clones talk to the same runner).
#[derive(Clone)]
pub struct L2Announcer {
    services: Latest<Vec<ServiceVips>>,
    members: Latest<Vec<Member>>,
    owned: tokio::sync::watch::Receiver<BTreeSet<String>>,
}

impl L2Announcer {
    /// Replaces the member list (Kubernetes mode: the speaker Pods, with their
    /// nodes' labels). Members that stay keep their state.
    pub fn set_members(&self, members: Vec<Member>) {
        self.members.send_replace(Some(members));
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
) -> Result<IfaceRt, L2Error> {
    let socket = Arc::new(
        PacketSocket::open(i.index).map_err(|source| L2Error::Socket {
            what: format!("a packet socket on {}", i.name),
            source,
        })?,
    );
    let responder = Arc::new(Mutex::new(Responder::new(i.mac)));
    let mcast = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None).ok();
    let receiver = tokio::spawn(receive(
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

    fn update(&mut self, services: &[ServiceVips]) {
        self.services.send_replace(Some(services.to_vec()));
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
    let named: Vec<String> = opts
        .advertisements
        .iter()
        .flat_map(|a| a.interfaces.clone())
        .collect();
    let ifaces = iface::announcing(&named);
    if ifaces.is_empty() {
        return Err(L2Error::NoInterface(if named.is_empty() {
            "any".into()
        } else {
            named.join(",")
        }));
    }
    let names: Vec<String> = ifaces.iter().map(|i| i.name.clone()).collect();
    crate::host::prepare_arp(&names)?;
    let mut rts = Vec::new();
    // Bounded: a flood of forged answers must not grow memory; one conflict
    // per VIP already makes the owner re-assert.
    let (conflict_tx, conflict_rx) = mpsc::channel(CONFLICT_QUEUE);
    for i in &ifaces {
        rts.push(open_iface(i, &conflict_tx, &metrics)?);
    }
    let udp = UdpSocket::bind(me.address)
        .await
        .map_err(|source| L2Error::Socket {
            what: format!("the membership socket on {}", me.address),
            source,
        })?;
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
    for r in ferrolb_l2::auth::Refusal::ALL {
        metrics
            .l2_heartbeats_refused
            .get_or_create(&crate::metrics::RefusalLabels {
                reason: r.reason().into(),
            })
            .inc_by(0);
    }
    let (services_tx, services_rx) = tokio::sync::watch::channel(None);
    let (members_tx, members_rx) = tokio::sync::watch::channel(None);
    let (owned_tx, owned) = tokio::sync::watch::channel(BTreeSet::new());
    let runner = Runner {
        opts,
        me: me.name,
        membership,
        udp,
        ifaces: rts,
        services: Vec::new(),
        owned: BTreeMap::new(),
        epoch: Instant::now(),
        metrics,
        lost_owner_at: None,
        named,
        conflict_tx,
        ticks: 0,
        isolated: false,
        local: crate::host::LocalRoutes::default(),
        owned_tx,
        refused_warn: ferrolb_ops::RateLimit::new(Duration::from_secs(60)),
    };
    tokio::spawn(runner.run(services_rx, members_rx, conflict_rx));
    Ok(L2Announcer {
        services: std::sync::Arc::new(services_tx),
        members: std::sync::Arc::new(members_tx),
        owned,
    })
}

/// Answers frames on one interface until its socket fails.
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
                    metrics.l2_requests.get_or_create(&labels).inc();
                }
                if let Some(reply) = o.reply {
                    if socket.send(&reply).await.is_ok() {
                        metrics.l2_answers.get_or_create(&labels).inc();
                    }
                }
                if let Some(c) = o.conflict {
                    if conflicts.try_send(c).is_err() {
                        metrics.dropped("l2_conflicts");
                    }
                }
            }

            Err(_) => {
                metrics.l2_malformed.get_or_create(&labels).inc();
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
    services: Vec<ServiceVips>,
    owned: BTreeMap<String, Owned>,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// When a member that owned something was declared down (for the failover histogram).
    lost_owner_at: Option<Instant>,
    /// Interfaces named in the config (empty: automatic).
    named: Vec<String>,
    conflict_tx: mpsc::Sender<(IpAddr, ferrolb_l2::wire::Mac)>,
    ticks: u64,
    /// No peer heard while peers are configured.
    isolated: bool,
    /// VIPs already made local on this node.
    local: crate::host::LocalRoutes,
    /// Publishes the owned service keys.
    owned_tx: tokio::sync::watch::Sender<BTreeSet<String>>,
    /// One warning a minute about refused datagrams, naming the source.
    refused_warn: ferrolb_ops::RateLimit,
}

impl Runner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut services: tokio::sync::watch::Receiver<Option<Vec<ServiceVips>>>,
        mut members: tokio::sync::watch::Receiver<Option<Vec<Member>>>,
        mut conflicts: mpsc::Receiver<(IpAddr, ferrolb_l2::wire::Mac)>,
    ) {
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
                changed = services.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(list) = services.borrow_and_update().clone() else { continue };
                    self.services = list;
                    let vips = self.services.iter().flat_map(|s| s.vips.iter().copied());
                    if let Err(e) = self.local.ensure(vips) {
                        tracing::error!(error = %e, "VIP traffic will not be accepted on this node");
                    }
                    self.elect().await;
                }
                Some((vip, mac)) = conflicts.recv() => {
                    self.metrics.l2_duplicates.get_or_create(&crate::metrics::VipLabels { vip: vip.to_string() }).inc();
                    tracing::warn!(%vip, other = %mac, "another MAC answers for a VIP this node owns");
                    // Re-assert now; the other node stands down once it sees our older claim.
                    let key = self.owned.iter().find(|(_, o)| o.vips.contains(&vip)).map(|(k, _)| k.clone());
                    if let Some(k) = key {
                        if let Some(o) = self.owned.get_mut(&k) {
                            o.next = Instant::now();
                        }
                    }
                }
            }
        }
    }

    fn claims(&self) -> Vec<(String, u64)> {
        self.owned
            .iter()
            .map(|(k, o)| (k.clone(), o.since.elapsed().as_millis() as u64))
            .collect()
    }

    /// Rechecks carrier every 100 ms and the interface list every second, so
    /// interfaces that appear or vanish are picked up without a restart.
    fn watch_interfaces(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            for i in &mut self.ifaces {
                let carrier = iface::read_iface(&i.name).is_some_and(|x| x.up && x.carrier);
                if carrier != i.carrier {
                    if carrier {
                        tracing::info!(interface = %i.name, "link up");
                    } else {
                        tracing::warn!(interface = %i.name, "link down");
                    }
                    i.carrier = carrier;
                }
            }
        }
        if self.ticks.is_multiple_of(100) {
            let now: Vec<iface::Iface> = iface::announcing(&self.named);
            let before = self.ifaces.len();
            self.ifaces.retain(|i| {
                let keep = now.iter().any(|n| n.name == i.name && n.index == i.index);
                if !keep {
                    tracing::warn!(interface = %i.name, "interface gone; no longer answering on it");
                }
                keep
            });
            for n in now {
                if !self.ifaces.iter().any(|i| i.name == n.name) {
                    if let Err(e) = crate::host::prepare_arp(std::slice::from_ref(&n.name)) {
                        tracing::error!(interface = %n.name, error = %e, "new interface not used");
                        continue;
                    }
                    match open_iface(&n, &self.conflict_tx, &self.metrics) {
                        Ok(rt) => self.ifaces.push(rt),
                        Err(e) => {
                            tracing::error!(interface = %n.name, error = %e, "new interface not used")
                        }
                    }
                }
            }
            if self.ifaces.len() != before {
                self.apply_owned();
            }
        }
    }

    /// Whether this node can announce at all: some announcing interface has a link.
    fn can_announce(&self) -> bool {
        self.ifaces.iter().any(|i| i.carrier)
    }

    async fn on_tick(&mut self) {
        self.watch_interfaces();
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
        let claims = self.claims();
        let (sends, changes) = self.membership.tick(now, &claims);
        for (to, bytes) in sends {
            let _ = self.udp.send_to(&bytes, to).await;
        }
        let mut any = false;
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

    /// Eligible live members for a service: node selectors of the
    /// advertisements covering its pool, and the service's own candidates.
    fn eligible(&self, s: &ServiceVips) -> Vec<String> {
        let pool = s.pool.as_str();
        let live = self.membership.live();
        let ads: Vec<&L2Advertisement> = self
            .opts
            .advertisements
            .iter()
            .filter(|a| a.pools.is_empty() || a.pools.iter().any(|p| p == pool))
            .collect();
        if ads.is_empty() {
            return Vec::new();
        }
        let me_ok = self.can_announce();
        live.into_iter()
            .filter(|name| *name != self.me || me_ok)
            .filter(|name| s.eligible(name))
            .filter(|name| {
                let Some(m) = self.opts.members.iter().find(|m| m.name == *name) else {
                    return false;
                };
                let mut labels = m.labels.clone();
                labels.insert("kubernetes.io/hostname".into(), m.name.clone());
                ads.iter()
                    .any(|a| a.node_selector.as_ref().is_none_or(|s| s.matches(&labels)))
            })
            .map(str::to_string)
            .collect()
    }

    async fn elect(&mut self) {
        if !self.membership.settled(self.now_ms()) {
            return;
        }
        let peer_claims: Vec<(String, String, u64)> = self
            .membership
            .peer_claims(self.now_ms())
            .map(|(n, k, h)| (n.to_string(), k.to_string(), h))
            .collect();
        let mine = self.claims();
        let mut changed = false;
        for s in self.services.clone() {
            let eligible = self.eligible(&s);
            let refs: Vec<&str> = eligible.iter().map(|s| s.as_str()).collect();
            let mut claims: Vec<Claim<'_>> = peer_claims
                .iter()
                .filter(|(_, k, _)| *k == s.key)
                .map(|(n, _, h)| Claim {
                    node: n.as_str(),
                    held_ms: *h,
                })
                .collect();
            if let Some((_, h)) = mine.iter().find(|(k, _)| *k == s.key) {
                claims.push(Claim {
                    node: &self.me,
                    held_ms: *h,
                });
            }
            let owner = election::owner(&s.key, &refs, &claims);
            let i_own = self.owned.contains_key(&s.key);
            if owner == Some(self.me.as_str()) && !i_own {
                tracing::info!(service = %s.key, vips = ?s.vips, "taking over: announcing");
                self.owned.insert(
                    s.key.clone(),
                    Owned {
                        since: Instant::now(),
                        taken: Instant::now(),
                        vips: s.vips.clone(),
                        next: Instant::now(),
                        sent: 0,
                    },
                );
                self.metrics.l2_ownership_changes.inc();
                changed = true;
            } else if owner != Some(self.me.as_str()) && i_own {
                tracing::info!(service = %s.key, new_owner = ?owner, "giving up: no longer answering");
                self.owned.remove(&s.key);
                self.metrics.l2_ownership_changes.inc();
                changed = true;
            }
        }
        // Services that left the configuration are given up too.
        let keys: BTreeSet<String> = self.services.iter().map(|s| s.key.clone()).collect();
        let before = self.owned.len();
        self.owned.retain(|k, _| keys.contains(k));
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
        for i in &mut self.ifaces {
            i.responder
                .lock()
                .expect("lock poisoned")
                .set_owned(vips.iter().copied());
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
    }

    /// Sends the announcements that are due.
    async fn announce_due(&mut self) {
        let now = Instant::now();
        let mut frames = Vec::new();
        for o in self.owned.values_mut() {
            if o.next > now {
                continue;
            }
            frames.extend(o.vips.iter().copied());
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
        for i in &self.ifaces {
            let out: Vec<Vec<u8>> = {
                let r = i.responder.lock().expect("lock poisoned");
                frames.iter().flat_map(|v| r.announce(*v)).collect()
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
