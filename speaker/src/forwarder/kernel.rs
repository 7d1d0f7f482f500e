//! The kernel data path inside the speaker: keeps the eBPF program's maps
//! equal to the kernel-mode ports of the forwarder, their backends' health
//! and the routes to them, and reads its counters into `/metrics`.
//!
//! The program (crates/sys/bpf/forward.bpf.c) forwards at tc ingress of the
//! announcing interfaces and of the interfaces toward backends (the replies
//! come back there). The user-space listener of every port stays open, so
//! clients on this host, which the program never sees, and every port the
//! program cannot take (it failed to load, a backend on this host, the maps
//! are full) are still served, by the tokio proxy. Which mode serves a port
//! is in `ferrolb_forwarder_mode`.
//!
//! What goes into the maps is decided by the pure [`Planner`] and
//! [`services`]; this module only does the I/O around them.

use super::port::PortRuntime;
use crate::metrics::{BackendLabels, Metrics, ModeLabels, PortLabels};
use ferrolb_config::{ForwardMode, Protocol};
use ferrolb_datapath::maps::{Counters, Proto, SvcKey, MAX_SERVICES};
use ferrolb_datapath::plan::{Backend, Planner, Service};
use ferrolb_ipset::Cidr;
use ferrolb_netlink::Way;
use ferrolb_sys::bpf::Datapath;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The NAT source ports: the larger of the two ranges of unprivileged ports
/// outside the host's ephemeral range (`net.ipv4.ip_local_port_range`), so
/// the program's translations never take a port the host's own connections
/// to the backends (health checks, the user-space forwarder) may use.
/// 1024-32767 under Linux's default 32768-60999. `None` when the ephemeral
/// range leaves fewer than 1,024 ports.
pub fn nat_ports(ephemeral: (u16, u16)) -> Option<(u16, u16)> {
    let (lo, hi) = (ephemeral.0.min(ephemeral.1), ephemeral.0.max(ephemeral.1));
    let below = (lo > 1024).then(|| (1024, lo - 1));
    let above = (hi < 65535).then(|| (hi + 1, 65535));
    let size = |r: &(u16, u16)| u32::from(r.1) - u32::from(r.0) + 1;
    [below, above]
        .into_iter()
        .flatten()
        .filter(|r| size(r) >= 1024)
        .max_by_key(size)
}

/// The host's ephemeral port range (this network namespace's).
fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// Routes to backends are looked up again this often.
const ROUTE_TTL: Duration = Duration::from_secs(5);
/// Counters are read this often.
const COUNTER_EVERY: Duration = Duration::from_secs(1);
/// Interfaces are looked at (added, gone) this often.
const IFACE_EVERY: Duration = Duration::from_secs(1);

/// The interfaces VIPs are announced on, as the `l2` entries name them:
/// empty (every candidate interface) when there is no entry or one names
/// none, as layer 2 itself reads them; BGP-only hosts attach everywhere
/// suitable too, since routers may send over any link.
pub fn announce_interfaces(config: &ferrolb_config::Config) -> crate::l2::iface::Wanted {
    crate::l2::wanted_interfaces(&config.l2)
}

/// One kernel-mode port as the planner needs it, read from the forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct PortView {
    /// VIP, port, protocol.
    pub vip: SocketAddr,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Backends: address, weight, up.
    pub backends: Vec<(SocketAddr, u32, bool)>,
    /// Allowed client prefixes.
    pub source_ranges: Vec<Cidr>,
    /// A flow idle this long is forgotten.
    pub idle: Duration,
    /// Direct server return (`kernel-dsr`) instead of NAT.
    pub dsr: bool,
}

/// The planner's service for `port`, with the route to each backend from
/// `way`; or why the kernel cannot serve it (it then stays in user space).
pub fn service(
    port: &PortView,
    nat: (u16, u16),
    way: &mut dyn FnMut(IpAddr) -> Result<Way, String>,
) -> Result<Service, String> {
    let proto = match port.protocol {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
        Protocol::Sctp => return Err("SCTP is not forwarded".into()),
    };
    let mut backends = Vec::with_capacity(port.backends.len());
    for (addr, weight, up) in &port.backends {
        if addr.is_ipv4() != port.vip.is_ipv4() {
            return Err(format!(
                "backend {addr} is of another address family than the VIP; the kernel path translates within one family"
            ));
        }
        if port.dsr && addr.port() != port.vip.port() {
            return Err(format!(
                "backend {addr} listens on port {}, but direct server return delivers the packets for port {} unchanged; make the backend listen on {} (targetPort = port) or use mode: kernel",
                addr.port(),
                port.vip.port(),
                port.vip.port()
            ));
        }
        let w = way(addr.ip()).map_err(|e| format!("no route to backend {addr}: {e}"))?;
        if w.local {
            return Err(format!(
                "backend {addr} is on this host; the kernel path sends packets out of an interface, so it cannot reach a local backend"
            ));
        }
        let nat_src = w
            .prefsrc
            .ok_or_else(|| format!("no source address on the way to backend {addr}"))?;
        backends.push(Backend {
            addr: *addr,
            weight: *weight,
            up: *up,
            nat_src,
            ifindex: w.oif,
        });
    }
    Ok(Service {
        key: SvcKey {
            vip: port.vip.ip(),
            port: port.vip.port(),
            proto,
        },
        backends,
        source_ranges: port.source_ranges.clone(),
        nat_ports: nat,
        idle: port.idle,
        dsr: port.dsr,
    })
}

/// What the data path last did with a port, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Served {
    Kernel,
    /// Kernel mode asked for, not possible: why.
    Userspace(String),
    /// User space by configuration.
    Configured,
}

/// The program, its planner, and what it serves.
pub struct KernelPath {
    metrics: Arc<Metrics>,
    dp: Option<Datapath>,
    /// Why the program cannot run. Kept for the process's life: a missing
    /// capability or an old kernel does not fix itself, and retrying on
    /// every Service change would only repeat the error.
    failed: Option<String>,
    planner: Planner,
    /// The services last planned (nothing is planned while they stay).
    last: Vec<Service>,
    routes: HashMap<IpAddr, (Result<Way, String>, Instant)>,
    served: BTreeMap<SvcKey, (PortLabels, Served)>,
    /// Counters read last, per service and backend id.
    seen_svc: HashMap<u32, Counters>,
    seen_backend: HashMap<u32, Counters>,
    /// Refusals counted per backend id when last looked at (every tick).
    seen_refused: HashMap<u32, u64>,
    counters_at: Instant,
    ifaces_at: Instant,
    /// Interfaces named for announcing (empty: every candidate).
    announce: crate::l2::iface::Wanted,
    /// Ports that went to user space since the last [`KernelPath::take_fallbacks`].
    fallbacks: Vec<Fallback>,
    /// NAT source ports, from the ephemeral range when the program loaded.
    nat: Option<(u16, u16)>,
    /// Loaded from pins: links of the previous speaker not taken over are
    /// removed after the next attach pass.
    adopting: bool,
    /// Whether a previous speaker's pins were looked for (once).
    leftovers_checked: bool,
}

/// The base directory of the data path's pins, set once at start-up from
/// the command line (`--datapath-pin-dir`); the process's network
/// namespace gets a directory of its own under it, since every namespace
/// has its own interfaces and data path.
static PIN_BASE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// Sets the pin base directory (`None`: never pin). Only the first call counts.
pub fn set_pin_base(base: Option<PathBuf>) {
    let _ = PIN_BASE.set(base);
}

/// This namespace's pin directory, if pinning is on.
fn pin_dir() -> Option<PathBuf> {
    pin_dir_under(PIN_BASE.get()?.as_ref()?)
}

/// This namespace's pin directory under `base`.
pub fn pin_dir_under(base: &std::path::Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    Some(base.join(format!("netns-{netns}")))
}

/// A kernel-mode port served in user space, and why (Kubernetes mode
/// turns it into a Warning Event on the Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The service (`namespace/name` in Kubernetes).
    pub service: String,
    /// `PORT/PROTOCOL`.
    pub port: String,
    /// Why the kernel does not serve it.
    pub reason: String,
}

impl KernelPath {
    /// Nothing loaded: the program is loaded when a port first wants it.
    pub fn new(metrics: Arc<Metrics>) -> KernelPath {
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(Instant::now);
        KernelPath {
            metrics,
            dp: None,
            failed: None,
            planner: Planner::new(),
            last: Vec::new(),
            routes: HashMap::new(),
            served: BTreeMap::new(),
            seen_svc: HashMap::new(),
            seen_backend: HashMap::new(),
            seen_refused: HashMap::new(),
            counters_at: long_ago,
            ifaces_at: long_ago,
            announce: Default::default(),
            fallbacks: Vec::new(),
            nat: None,
            adopting: false,
            leftovers_checked: false,
        }
    }

    /// The interfaces named for announcing (empty: every candidate); the
    /// program is attached to them and to the ones toward backends.
    pub fn set_interfaces(&mut self, announce: crate::l2::iface::Wanted) {
        if announce != self.announce {
            self.ifaces_at = Instant::now() - IFACE_EVERY * 2;
            self.announce = announce;
        }
    }

    /// Whether the program is loaded and serving.
    pub fn active(&self) -> bool {
        self.dp.is_some()
    }

    fn way(&mut self, ip: IpAddr) -> Result<Way, String> {
        let now = Instant::now();
        if let Some((w, at)) = self.routes.get(&ip) {
            if now.duration_since(*at) < ROUTE_TTL {
                return w.clone();
            }
        }
        let w = crate::netlink::route_to(ip).map_err(|e| e.to_string());
        self.routes.insert(ip, (w.clone(), now));
        w
    }

    /// Brings the maps to the kernel-mode ports among `ports` (called after
    /// every reload and on the health tick; cheap when nothing changed).
    pub fn sync(&mut self, ports: &[Arc<PortRuntime>]) {
        let kernel: Vec<&Arc<PortRuntime>> = ports
            .iter()
            .filter(|p| p.config().mode.is_kernel())
            .collect();
        let mut served: BTreeMap<SvcKey, (PortLabels, Served)> = ports
            .iter()
            .filter(|p| !p.config().mode.is_kernel())
            .map(|p| (svc_key(p), (p.labels.clone(), Served::Configured)))
            .collect();
        let mut want: Vec<Service> = Vec::new();
        if kernel.is_empty() {
            if let Some(dp) = self.dp.take() {
                dp.unpin();
                tracing::info!("no port in kernel mode: kernel data path detached");
                self.planner = Planner::new();
                self.last.clear();
            }
            if !self.leftovers_checked {
                self.leftovers_checked = true;
                if let Some(dir) = pin_dir() {
                    let gone = ferrolb_sys::bpf::remove_pins(&dir);
                    if !gone.is_empty() {
                        tracing::info!(interfaces = ?gone, "removed the kernel data path a previous speaker left: no port is in kernel mode now");
                    }
                }
            }
        } else if self.dp.is_none() && self.failed.is_none() {
            self.leftovers_checked = true;
            match self.load() {
                Ok(dp) => {
                    let eph = ephemeral_ports().unwrap_or((32768, 60999));
                    self.nat = nat_ports(eph);
                    tracing::info!(ephemeral = ?eph, nat_ports = ?self.nat, pinned = dp.pinned(), "kernel data path loaded");
                    self.dp = Some(dp);
                    self.last.clear();
                    self.ifaces_at = Instant::now() - IFACE_EVERY * 2;
                }
                Err(e) => self.fail(e.to_string()),
            }
        }
        for p in &kernel {
            let cfg = p.config();
            let view = PortView {
                vip: SocketAddr::new(p.key.vip, p.key.port),
                protocol: p.key.protocol,
                backends: p.weighted_backends(),
                source_ranges: p.service.source_ranges(),
                idle: match p.key.protocol {
                    Protocol::Udp => cfg.udp_idle_timeout,
                    _ => cfg.idle_timeout,
                },
                dsr: cfg.mode == ForwardMode::KernelDsr,
            };
            let key = svc_key(p);
            let failed = self.failed.clone();
            let outcome = match (failed, self.dp.is_some(), self.nat) {
                (Some(why), _, _) => Served::Userspace(why),
                (None, false, _) => {
                    Served::Userspace("the kernel data path is not loaded".into())
                }
                (None, true, _) if want.len() >= MAX_SERVICES as usize => Served::Userspace(format!(
                    "the kernel data path holds {MAX_SERVICES} ports; this one is served in user space"
                )),
                (None, true, None) => Served::Userspace(
                    "the host's ephemeral ports (net.ipv4.ip_local_port_range) leave no range of 1,024 ports for NAT; narrow it".into(),
                ),
                (None, true, Some(nat)) => {
                    match service(&view, nat, &mut |ip| self.way(ip)) {
                        Ok(s) => {
                            want.push(s);
                            Served::Kernel
                        }
                        Err(why) => Served::Userspace(why),
                    }
                }
            };
            served.insert(key, (p.labels.clone(), outcome));
        }
        if self.dp.is_some() {
            self.apply(&want);
        }
        // A write failure above dropped the program: everything is in user space then.
        if let Some(why) = &self.failed {
            for (_, s) in served.values_mut() {
                if *s == Served::Kernel {
                    *s = Served::Userspace(why.clone());
                }
            }
        }
        self.report(served);
        self.passive(&kernel);
        self.read_counters();
    }

    /// Passive health in kernel mode: every connection the program saw a
    /// backend refuse (its first answer a reset) since the last tick counts
    /// as a failed connect toward `fall`, as in user space, so a backend
    /// whose server died is taken out within a tick or two of its first
    /// refusals instead of at the next active check's verdict. NAT only: in
    /// DSR the answers do not pass here.
    fn passive(&mut self, ports: &[&Arc<PortRuntime>]) {
        let Some(dp) = self.dp.as_ref() else { return };
        for p in ports {
            if p.key.protocol != Protocol::Tcp || p.config().mode != ForwardMode::Kernel {
                continue;
            }
            let key = svc_key(p);
            if !matches!(self.served.get(&key), Some((_, Served::Kernel))) {
                continue;
            }
            let backends = p.backends();
            for (addr, bid) in self.planner.backend_ids(&key) {
                let Ok(c) = dp.backend_counters(bid) else {
                    continue;
                };
                // A backend seen for the first time (or an id reused) starts
                // from what the program has counted so far.
                let Some(old) = self.seen_refused.insert(bid, c.refused) else {
                    continue;
                };
                let new = c.refused.saturating_sub(old).min(100);
                if new == 0 {
                    continue;
                }
                let Some(b) = backends.iter().find(|b| b.addr == addr) else {
                    continue;
                };
                tracing::debug!(backend = %addr, refused = new, "kernel data path: connections refused by the backend");
                for _ in 0..new {
                    p.observe(b, ferrolb_balance::health::Observation::ConnectFailed);
                }
            }
        }
    }

    /// Loads the program, pinned when the pin directory allows (adopting
    /// what a previous speaker pinned: its maps, flows included, and its
    /// links), else unpinned; sets the planner to match.
    fn load(&mut self) -> Result<Datapath, ferrolb_sys::bpf::BpfError> {
        if let Some(dir) = pin_dir() {
            match Datapath::load_pinned(&dir) {
                Ok((dp, adopted)) => {
                    self.planner = match adopted {
                        Some(a) => {
                            let p = Planner::adopt(&a.services, &a.backends, &a.ranges);
                            tracing::info!(
                                services = p.adopted(),
                                backends = a.backends.len(),
                                pins = %dir.display(),
                                "kernel data path adopted from the previous speaker: its flows are kept"
                            );
                            p
                        }
                        None => Planner::new(),
                    };
                    self.adopting = true;
                    return Ok(dp);
                }
                Err(e @ ferrolb_sys::bpf::BpfError::Pin(_)) => {
                    tracing::info!(error = %e, "kernel data path not pinned: its flows end with this process (mount a bpffs at /sys/fs/bpf to keep them across restarts)");
                }
                Err(e) => return Err(e),
            }
        }
        self.planner = Planner::new();
        Datapath::load()
    }

    /// Plans and writes `want`, attaching to the interfaces it needs.
    fn apply(&mut self, want: &[Service]) {
        let now = Instant::now();
        if now.duration_since(self.ifaces_at) >= IFACE_EVERY || want != self.last.as_slice() {
            self.ifaces_at = now;
            self.attach(want);
        }
        if want == self.last.as_slice() {
            return;
        }
        let writes = match self.planner.plan(want) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "kernel data path: plan refused; the maps keep the last plan");
                return;
            }
        };
        let Some(dp) = self.dp.as_mut() else { return };
        match dp.write(&writes) {
            Ok(()) => {
                tracing::debug!(
                    services = want.len(),
                    slots = writes.slots.len(),
                    backends = writes.backends.len(),
                    "kernel data path maps written"
                );
                self.last = want.to_vec();
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Attaches to the announcing interfaces and those toward backends,
    /// and detaches from the ones no longer among them.
    fn attach(&mut self, want: &[Service]) {
        let Some(dp) = self.dp.as_mut() else { return };
        let all = crate::l2::iface::list();
        let mut names: BTreeSet<String> = crate::l2::iface::announcing(&self.announce)
            .into_iter()
            .map(|i| i.name)
            .collect();
        let toward: BTreeSet<u32> = want
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.ifindex))
            .collect();
        names.extend(
            all.iter()
                .filter(|i| toward.contains(&i.index))
                .map(|i| i.name.clone()),
        );
        for gone in dp.attached() {
            if !names.contains(&gone) {
                if let Err(e) = dp.detach(&gone) {
                    // Usually: the interface itself is gone, and the link with it.
                    tracing::debug!(interface = %gone, error = %e, "kernel data path: detach");
                }
            }
        }
        let mut attached = dp.attached().len();
        for n in &names {
            if dp.attached().contains(n) {
                continue;
            }
            match dp.attach(n) {
                Ok(()) => {
                    tracing::info!(interface = %n, "kernel data path attached");
                    attached += 1;
                }
                Err(e) => {
                    tracing::warn!(interface = %n, error = %e, "kernel data path: cannot attach; traffic there goes to the user-space listener")
                }
            }
        }
        if std::mem::take(&mut self.adopting) {
            let gone = dp.drop_stale();
            if !gone.is_empty() {
                tracing::info!(interfaces = ?gone, "kernel data path: detached the previous speaker's links on interfaces no longer used");
            }
        }
        if attached == 0 && !want.is_empty() {
            self.fail("no interface to attach to".into());
        }
    }

    /// The program cannot run: every kernel-mode port goes to user space.
    fn fail(&mut self, why: String) {
        tracing::error!(
            error = %why,
            "kernel data path unavailable: kernel-mode ports are served by the user-space forwarder"
        );
        self.metrics.kernel_fallbacks.inc();
        self.failed = Some(why);
        self.dp = None;
        self.planner = Planner::new();
        self.last.clear();
    }

    /// Logs changes of mode and sets `ferrolb_forwarder_mode`.
    fn report(&mut self, served: BTreeMap<SvcKey, (PortLabels, Served)>) {
        self.metrics.kernel_active.set(i64::from(self.dp.is_some()));
        self.metrics
            .kernel_pinned
            .set(i64::from(self.dp.as_ref().is_some_and(|d| d.pinned())));
        // Every health tick lands here; most change nothing.
        if served == self.served {
            return;
        }
        for (key, (labels, now)) in &served {
            let before = self.served.get(key).map(|(_, s)| s);
            if before != Some(now) {
                match now {
                    Served::Kernel => tracing::info!(
                        service = %labels.service, port = %labels.port,
                        "served by the kernel data path"
                    ),
                    Served::Configured => {}
                    Served::Userspace(why) => {
                        tracing::warn!(
                            service = %labels.service, port = %labels.port, reason = %why,
                            "kernel mode asked for, served in user space"
                        );
                        if self.fallbacks.len() < 1024 {
                            self.fallbacks.push(Fallback {
                                service: labels.service.clone(),
                                port: labels.port.clone(),
                                reason: why.clone(),
                            });
                        }
                    }
                }
            }
        }
        for (key, (labels, _)) in &self.served {
            if !served.contains_key(key) {
                for mode in ["kernel", "userspace"] {
                    self.metrics
                        .forwarder_mode
                        .remove(&mode_labels(labels, mode));
                }
            }
        }
        for (labels, now) in served.values() {
            let k = matches!(now, Served::Kernel);
            self.metrics
                .forwarder_mode
                .get_or_create(&mode_labels(labels, "kernel"))
                .set(i64::from(k));
            self.metrics
                .forwarder_mode
                .get_or_create(&mode_labels(labels, "userspace"))
                .set(i64::from(!k));
        }
        self.served = served;
    }

    /// Adds what the program counted since the last read to the counters.
    fn read_counters(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.counters_at) < COUNTER_EVERY {
            return;
        }
        self.counters_at = now;
        let Some(dp) = self.dp.as_ref() else { return };
        for (key, (labels, served)) in &self.served {
            if *served != Served::Kernel {
                continue;
            }
            let Some(id) = self.planner.service_id(key) else {
                continue;
            };
            if let Ok(c) = dp.service_counters(id) {
                let old = self.seen_svc.insert(id, c).unwrap_or_default();
                let d = delta(&old, &c);
                let m = &self.metrics;
                m.kernel_packets.get_or_create(labels).inc_by(d.packets);
                m.kernel_bytes.get_or_create(labels).inc_by(d.bytes);
                m.kernel_flows.get_or_create(labels).inc_by(d.flows);
                m.kernel_dropped.get_or_create(labels).inc_by(d.dropped);
            }
            for (addr, bid) in self.planner.backend_ids(key) {
                if let Ok(c) = dp.backend_counters(bid) {
                    let old = self.seen_backend.insert(bid, c).unwrap_or_default();
                    let d = delta(&old, &c);
                    let b = BackendLabels {
                        service: labels.service.clone(),
                        port: labels.port.clone(),
                        backend: addr.to_string(),
                    };
                    let m = &self.metrics;
                    m.kernel_backend_packets.get_or_create(&b).inc_by(d.packets);
                    m.kernel_backend_bytes.get_or_create(&b).inc_by(d.bytes);
                    m.kernel_backend_flows.get_or_create(&b).inc_by(d.flows);
                }
            }
        }
    }

    /// The ports that went to user space since the last call.
    pub fn take_fallbacks(&mut self) -> Vec<Fallback> {
        std::mem::take(&mut self.fallbacks)
    }

    /// Detaches and frees the program and its pins (flows are forgotten):
    /// an orderly stop. A speaker that dies instead leaves the pinned data
    /// path forwarding for the next one to adopt.
    pub fn stop(&mut self) {
        if let Some(dp) = self.dp.take() {
            dp.unpin();
            tracing::info!("kernel data path detached");
        }
        self.metrics.kernel_active.set(0);
        self.metrics.kernel_pinned.set(0);
    }
}

fn svc_key(p: &PortRuntime) -> SvcKey {
    SvcKey {
        vip: p.key.vip,
        port: p.key.port,
        proto: if p.key.protocol == Protocol::Udp {
            Proto::Udp
        } else {
            Proto::Tcp
        },
    }
}

fn mode_labels(p: &PortLabels, mode: &str) -> ModeLabels {
    ModeLabels {
        service: p.service.clone(),
        port: p.port.clone(),
        mode: mode.into(),
    }
}

/// What grew from `old` to `new`; an id reused by another service (its
/// counters restart lower) counts from zero.
fn delta(old: &Counters, new: &Counters) -> Counters {
    let d = |o: u64, n: u64| if n >= o { n - o } else { n };
    Counters {
        packets: d(old.packets, new.packets),
        bytes: d(old.bytes, new.bytes),
        flows: d(old.flows, new.flows),
        dropped: d(old.dropped, new.dropped),
        refused: d(old.refused, new.refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(local: bool) -> impl Fn(IpAddr) -> Result<Way, String> {
        move |ip: IpAddr| {
            if ip.to_string().ends_with(".99") {
                return Err("Network is unreachable".into());
            }
            Ok(Way {
                oif: 4,
                prefsrc: Some(if ip.is_ipv4() {
                    "10.0.0.254".parse().unwrap()
                } else {
                    "fd00::fe".parse().unwrap()
                }),
                gateway: None,
                local,
            })
        }
    }

    fn view(backends: &[&str]) -> PortView {
        PortView {
            vip: "192.0.2.10:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            backends: backends
                .iter()
                .map(|b| (b.parse().unwrap(), 1, true))
                .collect(),
            source_ranges: vec![],
            idle: Duration::from_secs(600),
            dsr: false,
        }
    }

    #[test]
    fn dsr_needs_backends_on_the_service_port() {
        let mut v = view(&["10.0.0.1:80", "10.0.0.2:80"]);
        v.dsr = true;
        let s = service(&v, (1024, 32767), &mut way(false)).unwrap();
        assert!(s.dsr);
        let mut v = view(&["10.0.0.1:80", "10.0.0.2:8080"]);
        v.dsr = true;
        let e = service(&v, (1024, 32767), &mut way(false)).unwrap_err();
        assert!(
            e.contains("backend 10.0.0.2:8080 listens on port 8080"),
            "{e}"
        );
        v.dsr = false;
        assert!(
            service(&v, (1024, 32767), &mut way(false)).is_ok(),
            "NAT may change the port"
        );
    }

    #[test]
    fn a_port_becomes_a_service_with_the_routes_to_its_backends() {
        let s = service(
            &view(&["10.0.0.1:8080", "10.0.0.2:8080"]),
            (1024, 32767),
            &mut way(false),
        )
        .unwrap();
        assert_eq!(s.key.port, 80);
        assert_eq!(s.key.proto, Proto::Tcp);
        assert_eq!(s.nat_ports, (1024, 32767));
        assert!(s
            .backends
            .iter()
            .all(|b| b.ifindex == 4 && b.nat_src == "10.0.0.254".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn ports_the_kernel_cannot_serve_say_why() {
        let e = service(&view(&["10.0.0.1:8080"]), (1024, 32767), &mut way(true)).unwrap_err();
        assert!(e.contains("on this host"), "{e}");
        let e = service(&view(&["10.0.0.99:8080"]), (1024, 32767), &mut way(false)).unwrap_err();
        assert!(e.contains("no route to backend 10.0.0.99:8080"), "{e}");
        let e = service(&view(&["[fd00::1]:8080"]), (1024, 32767), &mut way(false)).unwrap_err();
        assert!(e.contains("another address family"), "{e}");
        let mut sctp = view(&["10.0.0.1:8080"]);
        sctp.protocol = Protocol::Sctp;
        assert!(service(&sctp, (1024, 32767), &mut way(false)).is_err());
        let mut no_src = |_: IpAddr| {
            Ok(Way {
                oif: 4,
                prefsrc: None,
                gateway: None,
                local: false,
            })
        };
        let e = service(&view(&["10.0.0.1:8080"]), (1024, 32767), &mut no_src).unwrap_err();
        assert!(e.contains("no source address"), "{e}");
    }

    #[test]
    fn nat_ports_stay_out_of_the_ephemeral_range() {
        assert_eq!(nat_ports((32768, 60999)), Some((1024, 32767)));
        assert_eq!(
            nat_ports((60999, 32768)),
            Some((1024, 32767)),
            "as written reversed"
        );
        assert_eq!(nat_ports((1024, 60000)), Some((60001, 65535)));
        assert_eq!(nat_ports((2000, 65535)), None, "976 ports below: too few");
        assert_eq!(nat_ports((1024, 65535)), None);
        assert_eq!(nat_ports((10000, 20000)), Some((20001, 65535)));
    }

    #[test]
    fn counters_only_grow() {
        let c = |p| Counters {
            packets: p,
            bytes: p * 100,
            flows: 1,
            dropped: 0,
            refused: 0,
        };
        assert_eq!(delta(&c(5), &c(8)).packets, 3);
        assert_eq!(
            delta(&c(8), &c(2)).packets,
            2,
            "a restarted id counts afresh"
        );
    }
}
