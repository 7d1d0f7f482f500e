//! BGP mode: one task per peer owns the TCP connection and the timers, runs
//! the pure session state machine (`ferrolb_bgp::fsm`), and advertises the
//! healthy services' VIPs as the `advertisements` describe, sending only
//! differences after the initial table and End-of-RIB. What a peer should
//! have is decided in `policy` (pure); this module does the sockets.

pub mod policy;

pub use policy::{desired, NextHops};

use crate::announce::{Announcer, Change, Table};
use crate::metrics::{Metrics, PeerLabels};
use ferrolb_bgp::codec::{self, Wire};
use ferrolb_bgp::fsm::{self, Event, Output, Session, Timer};
use ferrolb_bgp::message::*;
use ferrolb_config::{BgpAdvertisement, Peer, PeerPassword};
use policy::Rib;
use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How BGP mode runs on this node.
#[derive(Debug, Clone)]
pub struct Options {
    /// This node's name: services it is not eligible for are not advertised.
    pub node: String,
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Peers this node talks to (node selectors already applied).
    pub peers: Vec<Peer>,
    /// What to announce.
    pub advertisements: Vec<BgpAdvertisement>,
}

/// What one peer's task is told, in order.
enum PeerInput {
    /// This node's eligible services changed.
    Changes(Arc<[Change]>),
    /// The advertisements changed: every route is recomputed and only the
    /// differences are sent; the session stays up.
    Advertisements(Arc<[BgpAdvertisement]>),
    /// End the session with a Cease carrying `reason`. With `forget` the
    /// peer left the configuration and its metric series go too, so no
    /// "session down" alert fires for a peer nobody wants.
    Stop {
        /// The RFC 9003 shutdown message.
        reason: &'static str,
        /// Remove the peer's series.
        forget: bool,
    },
}

/// A running peer: its configuration and its task.
struct PeerHandle {
    peer: Peer,
    inputs: mpsc::UnboundedSender<PeerInput>,
    task: JoinHandle<()>,
}

/// One listening socket (a local address and port) and the TCP-MD5 keys
/// set on it, so a reconfiguration changes keys in place instead of
/// closing a socket routers connect to.
struct Listener {
    socket: Arc<tokio::net::TcpListener>,
    keys: BTreeMap<IpAddr, Vec<u8>>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where each peer's incoming connections go: its task's inbox, by address.
type Inboxes = Arc<std::sync::Mutex<HashMap<IpAddr, mpsc::Sender<TcpStream>>>>;

/// The handle standalone and Kubernetes mode talk to.
pub struct BgpAnnouncer {
    node: String,
    /// The router ID the running sessions use (none before the first configuration).
    router_id: Option<Ipv4Addr>,
    ads: Arc<[BgpAdvertisement]>,
    /// Running peers, by name.
    peers: BTreeMap<String, PeerHandle>,
    /// The services this node may advertise (eligible), as last told.
    mine: Table,
    /// VIPs made local so traffic the routers send here is accepted.
    local: crate::host::LocalRoutes,
    metrics: Arc<Metrics>,
    /// BFD, started when some peer first asks for it.
    hub: Option<crate::bfd::Hub>,
    listeners: BTreeMap<SocketAddr, Listener>,
    inboxes: Inboxes,
    /// BFD discriminators are never reused within a run.
    next_disc: u32,
    /// Tasks of peers a reconfiguration ended, sending their Cease.
    ending: Vec<JoinHandle<()>>,
}

impl Announcer for BgpAnnouncer {
    fn name(&self) -> &'static str {
        "bgp"
    }

    fn update(&mut self, changes: &[Change]) {
        // Every node that may announce a service advertises it (ECMP); the others do not.
        let mine: Vec<Change> = changes
            .iter()
            .map(|c| match c {
                Change::Put(s) if !s.eligible(&self.node) => Change::Remove(s.key.clone()),
                c => c.clone(),
            })
            .collect();
        let touched = self.mine.apply(&mine);
        if touched.is_empty() {
            return;
        }
        // Local before advertised, so the first packet a router sends is accepted.
        let advertised = |s: &Option<Arc<crate::announce::ServiceVips>>| -> Vec<IpAddr> {
            s.as_ref()
                .filter(|s| s.healthy)
                .map(|s| s.vips.clone())
                .unwrap_or_default()
        };
        let gone = touched.values().flat_map(|(before, after)| {
            let now = advertised(after);
            advertised(before)
                .into_iter()
                .filter(move |v| !now.contains(v))
        });
        let wanted = touched.values().flat_map(|(_, after)| advertised(after));
        if let Err(e) = self.local.change(gone.collect::<Vec<_>>(), wanted) {
            tracing::error!(error = %e, "VIP traffic routed to this node will be dropped");
        }
        let batch: Arc<[Change]> = touched
            .into_iter()
            .map(|(key, (_, after))| match after {
                Some(s) => Change::Put(s),
                None => Change::Remove(key),
            })
            .collect();
        for p in self.peers.values() {
            let _ = p.inputs.send(PeerInput::Changes(Arc::clone(&batch)));
        }
    }

    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        self.listeners.clear();
        let mut tasks = std::mem::take(&mut self.ending);
        for (_, p) in std::mem::take(&mut self.peers) {
            let _ = p.inputs.send(PeerInput::Stop {
                reason: "ferrolb speaker shutting down",
                forget: false,
            });
            tasks.push(p.task);
        }
        tasks
    }
}

/// Connections from a router waiting for its peer task.
const INBOX: usize = 4;

/// Incoming connections of one peer reading their OPEN at once.
const CANDIDATES: usize = 4;

/// How long a reset peer's new task waits for the old one's Cease, so the
/// router never sees the new connection while the old session is up.
const RESET_WAIT: Duration = Duration::from_secs(2);

/// A peer as it matters to its session: the node selector only decides
/// whether this node has the peer at all.
fn session_config(p: &Peer) -> Peer {
    Peer {
        node_selector: None,
        ..p.clone()
    }
}

/// The local address and port a peer's router connects to.
fn listen_address(p: &Peer) -> SocketAddr {
    let ip = p.source_address.unwrap_or(if p.address.is_ipv6() {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    SocketAddr::new(ip, p.port)
}

/// Starts one session task per peer (and BFD for the peers that ask for it).
pub async fn start(opts: Options, metrics: Arc<Metrics>) -> std::io::Result<BgpAnnouncer> {
    let mut bgp = BgpAnnouncer {
        node: opts.node.clone(),
        router_id: None,
        ads: Arc::from(Vec::new()),
        peers: BTreeMap::new(),
        mine: Table::default(),
        local: crate::host::LocalRoutes::default(),
        metrics,
        hub: None,
        listeners: BTreeMap::new(),
        inboxes: Arc::default(),
        next_disc: 1,
        ending: Vec::new(),
    };
    bgp.reconfigure(opts).await?;
    Ok(bgp)
}

/// What a reconfiguration did, per peer, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconfigured {
    /// Peers that started.
    pub added: Vec<String>,
    /// Peers whose session was reset (their configuration, or the router ID, changed).
    pub reset: Vec<String>,
    /// Peers whose session ended.
    pub removed: Vec<String>,
    /// Whether the advertisements changed (sent to the untouched sessions as differences).
    pub advertisements: bool,
}

impl Reconfigured {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.reset.is_empty()
            && self.removed.is_empty()
            && !self.advertisements
    }
}

impl BgpAnnouncer {
    /// The peers this node has sessions with (configured; up or not).
    pub fn peer_names(&self) -> Vec<String> {
        self.peers.keys().cloned().collect()
    }

    /// Applies a new BGP configuration without touching what did not change:
    /// sessions of unchanged peers stay up (new advertisements reach them as
    /// differences), a changed peer is reset alone, a removed one gets a
    /// Cease. Listening sockets that must be opened are opened first: if
    /// that fails nothing changes and the error says why.
    pub async fn reconfigure(&mut self, opts: Options) -> std::io::Result<Reconfigured> {
        // Prepare everything that can fail.
        let mut groups: BTreeMap<SocketAddr, Vec<&Peer>> = BTreeMap::new();
        for p in &opts.peers {
            groups.entry(listen_address(p)).or_default().push(p);
        }
        let mut opened: BTreeMap<SocketAddr, (tokio::net::TcpListener, BTreeMap<IpAddr, Vec<u8>>)> =
            BTreeMap::new();
        for (addr, group) in &groups {
            if self.listeners.contains_key(addr) {
                continue;
            }
            let keys = listener_keys(group)?;
            match bind_listener(*addr, &keys) {
                Ok(l) => {
                    opened.insert(*addr, (l, keys));
                }
                Err(e) if group.iter().all(|p| !p.passive) => {
                    let names: Vec<&str> = group.iter().map(|p| p.name.as_str()).collect();
                    tracing::warn!(%addr, peers = ?names, error = %e, "cannot accept connections from these (active) peers; only outgoing sessions");
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} for passive BGP peers: {e}"),
                    ));
                }
            }
        }
        if self.hub.is_none() && opts.peers.iter().any(|p| p.bfd.is_some()) {
            self.hub = Some(crate::bfd::Hub::start(Arc::clone(&self.metrics)).await?);
        }

        // Commit.
        let mut done = Reconfigured::default();
        let router_changed = self.router_id.is_some_and(|r| r != opts.router_id);
        self.router_id = Some(opts.router_id);
        self.node = opts.node;
        done.advertisements = *self.ads != *opts.advertisements;
        self.ads = Arc::from(opts.advertisements);
        // Listeners: gone groups close, kept ones get their keys in place, new ones start.
        self.listeners.retain(|addr, _| groups.contains_key(addr));
        for (addr, l) in self.listeners.iter_mut() {
            let want = listener_keys(&groups[addr])?;
            for (ip, key) in &want {
                if l.keys.get(ip) != Some(key) {
                    ferrolb_sys::set_tcp_md5(&*l.socket, *ip, key)?;
                }
            }
            for ip in l.keys.keys().filter(|ip| !want.contains_key(ip)) {
                ferrolb_sys::set_tcp_md5(&*l.socket, *ip, &[])?;
            }
            l.keys = want;
        }
        for (addr, (socket, keys)) in opened {
            let socket = Arc::new(socket);
            let task = tokio::spawn(accept(
                Arc::clone(&socket),
                Arc::clone(&self.inboxes),
                Arc::clone(&self.metrics),
            ));
            self.listeners.insert(addr, Listener { socket, keys, task });
        }
        let wanted: BTreeMap<String, Peer> = opts
            .peers
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let gone: Vec<String> = self
            .peers
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            let h = self.peers.remove(&name).expect("listed above");
            let _ = h.inputs.send(PeerInput::Stop {
                reason: "peer removed from the ferrolb configuration",
                forget: true,
            });
            self.ending.push(h.task);
            done.removed.push(name);
        }
        for (name, p) in wanted {
            let previous = match self.peers.remove(&name) {
                Some(h) if session_config(&h.peer) == session_config(&p) && !router_changed => {
                    if done.advertisements {
                        let _ = h
                            .inputs
                            .send(PeerInput::Advertisements(Arc::clone(&self.ads)));
                    }
                    self.peers.insert(name, h);
                    continue;
                }
                Some(h) => {
                    let _ = h.inputs.send(PeerInput::Stop {
                        reason: "ferrolb configuration of this peer changed; reconnecting",
                        forget: false,
                    });
                    done.reset.push(name.clone());
                    Some(h.task)
                }
                None => {
                    done.added.push(name.clone());
                    None
                }
            };
            let h = self.spawn_peer(p, previous);
            self.peers.insert(name, h);
        }
        // Inboxes and BFD sessions of addresses no peer has any more.
        let addresses: BTreeSet<IpAddr> = self.peers.values().map(|h| h.peer.address).collect();
        self.inboxes
            .lock()
            .expect("lock poisoned")
            .retain(|a, _| addresses.contains(a));
        if let Some(hub) = &self.hub {
            let bfd: BTreeSet<IpAddr> = self
                .peers
                .values()
                .filter(|h| h.peer.bfd.is_some())
                .map(|h| h.peer.address)
                .collect();
            hub.retain(&bfd);
        }
        self.ending.retain(|t| !t.is_finished());
        Ok(done)
    }

    /// Starts a peer's task (after `previous`, the task it replaces, ended)
    /// and hands it every service this node may advertise.
    fn spawn_peer(&mut self, p: Peer, previous: Option<JoinHandle<()>>) -> PeerHandle {
        let (tx, rx) = mpsc::channel(INBOX);
        self.inboxes
            .lock()
            .expect("lock poisoned")
            .insert(p.address, tx);
        let bfd = match (&self.hub, &p.bfd) {
            (Some(h), Some(b)) => {
                let disc = self.next_disc;
                self.next_disc += 1;
                Some(h.session(
                    p.address,
                    &p.name,
                    crate::bfd::config(b, disc),
                    Arc::clone(&self.metrics),
                ))
            }
            _ => None,
        };
        let task = PeerTask {
            peer: p.clone(),
            router_id: p
                .router_id
                .unwrap_or(self.router_id.expect("set before peers start")),
            ads: Arc::clone(&self.ads),
            metrics: Arc::clone(&self.metrics),
        };
        let (inputs, inputs_rx) = mpsc::unbounded_channel();
        let all: Arc<[Change]> = self.mine.iter().cloned().map(Change::Put).collect();
        if !all.is_empty() {
            let _ = inputs.send(PeerInput::Changes(all));
        }
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = tokio::time::timeout(RESET_WAIT, previous).await;
            }
            task.run(inputs_rx, bfd, Some(rx)).await;
        });
        PeerHandle {
            peer: p,
            inputs,
            task,
        }
    }
}

/// The TCP-MD5 keys a listening socket needs for `peers`. A key that cannot
/// be read fails closed: a random key nobody knows, so the kernel lets no
/// connection from that peer through, keyed or not.
fn listener_keys(peers: &[&Peer]) -> std::io::Result<BTreeMap<IpAddr, Vec<u8>>> {
    let mut keys = BTreeMap::new();
    for p in peers {
        let key = match password(p) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(peer = %p.name, error = %e, "no TCP-MD5 key for this peer: refusing its connections");
                let mut k = vec![0u8; ferrolb_sys::TCP_MD5_MAX_KEY];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| std::io::Error::other("no randomness for a TCP-MD5 key"))?;
                Some(k)
            }
        };
        if let Some(key) = key {
            keys.insert(p.address, key);
        }
    }
    Ok(keys)
}

/// Accepts the routers' connections on one socket and hands each to its
/// peer's task; connections from addresses that are no peer are closed.
async fn accept(listener: Arc<tokio::net::TcpListener>, inboxes: Inboxes, metrics: Arc<Metrics>) {
    let mut refused_warn = ferrolb_ops::RateLimit::new(Duration::from_secs(60));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => {
                backoff = Duration::from_millis(10);
                a
            }
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::debug!(error = %e, "BGP accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let from_ip = match from.ip() {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
            v4 => v4,
        };
        let inbox = inboxes
            .lock()
            .expect("lock poisoned")
            .get(&from_ip)
            .cloned();
        match inbox {
            Some(tx) => {
                let _ = stream.set_nodelay(true);
                if tx.try_send(stream).is_err() {
                    metrics.dropped("bgp_inbox");
                }
            }
            None => {
                if let Some(held) = refused_warn.allow(std::time::Instant::now()) {
                    tracing::warn!(%from, repeats_not_logged = held, "refused a BGP connection from an address that is no configured peer (bgp.peers[].address)");
                }
            }
        }
    }
}

/// Listens for the routers' connections on `addr` (the peers'
/// `sourceAddress`, or any), with each peer's TCP-MD5 key set on it.
fn bind_listener(
    addr: SocketAddr,
    keys: &BTreeMap<IpAddr, Vec<u8>>,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    for (ip, key) in keys {
        ferrolb_sys::set_tcp_md5(&socket, *ip, key)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(64)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn password(peer: &Peer) -> std::io::Result<Option<Vec<u8>>> {
    Ok(match &peer.password {
        Some(PeerPassword::Inline(k)) => Some(k.clone().into_bytes()),
        Some(PeerPassword::File(path)) => Some(
            std::fs::read_to_string(path)?
                .trim_end()
                .as_bytes()
                .to_vec(),
        ),
        // Kubernetes mode replaces it with the Secret's value before a peer
        // starts; one still here could not be read (the error was logged).
        Some(PeerPassword::Secret { name, .. }) => {
            return Err(std::io::Error::other(format!(
                "the password Secret {name:?} was not read; no session without its key"
            )))
        }
        None => None,
    })
}

/// The first usable address of the other family on the interface holding
/// `local`: global IPv6 (not link-local), or IPv4 outside 169.254/16. This is
/// what lets one node config (a DaemonSet's) send IPv6 routes over an IPv4
/// session with each node's own next hop.
pub fn other_family_address(local: IpAddr) -> Option<IpAddr> {
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .ok()?
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip = if let Some(v4) = a.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(a.as_sockaddr_in6()?.ip())
            };
            Some((ifa.interface_name, ip))
        })
        .collect();
    let local = match local {
        IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(local),
        v4 => v4,
    };
    let iface = &addrs.iter().find(|(_, ip)| *ip == local)?.0;
    addrs
        .iter()
        .filter(|(name, _)| name == iface)
        .map(|(_, ip)| *ip)
        .find(|ip| match (local, ip) {
            (IpAddr::V4(_), IpAddr::V6(a)) => {
                !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80
            }
            (IpAddr::V6(_), IpAddr::V4(a)) => !a.is_loopback() && !a.is_link_local(),
            _ => false,
        })
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// Reads a connection's first message, which must be an OPEN; returns the
/// connection, the OPEN and any bytes that followed it.
async fn read_open(mut stream: TcpStream) -> std::io::Result<(TcpStream, Open, Vec<u8>)> {
    let wire = Wire::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match codec::decode(&buf, &wire) {
            Ok(Some((Message::Open(o), used))) => {
                buf.drain(..used);
                return Ok((stream, o, buf));
            }
            Ok(Some((m, _))) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("first message is not an OPEN: {m:?}"),
                ))
            }
            Ok(None) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.reason,
                ))
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether a peer's task goes on after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

struct PeerTask {
    peer: Peer,
    router_id: Ipv4Addr,
    ads: Arc<[BgpAdvertisement]>,
    metrics: Arc<Metrics>,
}

fn timer_index(t: Timer) -> usize {
    match t {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
    }
}

async fn connect(peer: Peer) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::new(peer.address, peer.port);
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if let Some(key) = password(&peer)? {
        ferrolb_sys::set_tcp_md5(&socket, peer.address, &key)?;
    }
    if let Some(ttl) = peer.ebgp_multihop {
        if addr.is_ipv4() {
            socket.set_ttl_v4(ttl as u32)?;
        } else {
            socket.set_unicast_hops_v6(ttl as u32)?;
        }
    }
    if let Some(src) = peer.source_address {
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

impl PeerTask {
    fn labels(&self) -> PeerLabels {
        PeerLabels {
            peer: self.peer.name.clone(),
        }
    }

    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<PeerInput>,
        mut bfd: Option<watch::Receiver<bool>>,
        mut inbox: Option<mpsc::Receiver<TcpStream>>,
    ) {
        // Every peer has a series from the start, so `session_up == 0` alerts fire
        // for a session that never came up.
        self.metrics
            .bgp_session_up
            .get_or_create(&self.labels())
            .set(0);
        let cfg = fsm::Config {
            local_asn: self.peer.my_asn,
            peer_asn: self.peer.asn,
            router_id: self.router_id,
            hold_time: self.peer.hold_time.as_secs() as u16,
            passive: self.peer.passive,
            connect_retry: Duration::from_secs(2),
            families: vec![Afi::Ipv4, Afi::Ipv6],
            graceful_restart: self
                .peer
                .graceful_restart
                .enabled
                .then_some(self.peer.graceful_restart.restart_time.as_secs() as u16),
        };
        let mut st = State {
            fsm: Session::new(cfg),
            conn: None,
            rbuf: Vec::new(),
            timers: [None; 3],
            connecting: None,
            wire: Wire::default(),
            advertised: BTreeMap::new(),
            families: Vec::new(),
            pending: Vec::new(),
            hops: None,
            outgoing: false,
            rib: None,
            connect_warn: ferrolb_ops::RateLimit::new(Duration::from_secs(60)),
            abandoned: false,
        };
        // The services as this peer's task knows them; shared entries, never copied.
        let mut table = Table::default();
        self.feed(&mut st, &table, Event::Start).await;
        let mut buf = vec![0u8; 65_536];
        // Connections the router opened while ours exists, with their OPEN read.
        // At most CANDIDATES read their OPEN at once; more are closed and counted.
        let (cand_tx, mut candidates) = mpsc::channel::<(TcpStream, Open, Vec<u8>)>(CANDIDATES);
        loop {
            let deadline = st.timers.iter().flatten().min().copied();
            tokio::select! {
                _ = async { crate::bfd::down(bfd.as_mut().expect("guarded")).await }, if bfd.is_some() => {
                    self.on_bfd_down(&mut st, &table).await;
                }
                incoming = async { inbox.as_mut().expect("guarded").recv().await }, if inbox.is_some() => {
                    match incoming {
                        Some(stream) => self.on_incoming(&mut st, &table, stream, &cand_tx).await,
                        None => inbox = None,
                    }
                }
                Some((stream, open, rest)) = candidates.recv() => {
                    self.on_candidate(&mut st, &table, stream, open, rest).await;
                }
                input = inputs.recv() => {
                    let Some(first) = input else { return };
                    // Everything queued meanwhile: consecutive service changes as one batch.
                    let mut queue = vec![first];
                    while let Ok(more) = inputs.try_recv() {
                        queue.push(more);
                    }
                    if self.on_inputs(&mut st, &mut table, queue).await == Flow::Stop {
                        return;
                    }
                }
                result = async { st.connecting.as_mut().expect("guarded").await }, if st.connecting.is_some() => {
                    self.on_connected(&mut st, &table, result).await;
                }
                read = async { st.conn.as_mut().expect("guarded").read(&mut buf).await }, if st.conn.is_some() => {
                    let got = match read {
                        Ok(n) if n > 0 => Some(&buf[..n]),
                        _ => None,
                    };
                    self.on_read(&mut st, &table, got).await;
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.on_timers(&mut st, &table).await;
                }
            }
        }
    }

    /// Hands `ev` to the state machine and carries out what it says.
    async fn feed(&self, st: &mut State, table: &Table, ev: Event) {
        let out = st.fsm.handle(ev);
        self.apply(st, out, table).await;
    }

    /// BFD declared the path down: do not wait for the hold timer (RFC 5882).
    async fn on_bfd_down(&self, st: &mut State, table: &Table) {
        tracing::warn!(peer = %self.peer.name, "BFD declared the path down; closing the session");
        self.feed(st, table, Event::TcpFailed).await;
    }

    /// The router connected to us.
    async fn on_incoming(
        &self,
        st: &mut State,
        table: &Table,
        stream: TcpStream,
        candidates: &mpsc::Sender<(TcpStream, Open, Vec<u8>)>,
    ) {
        if !self.peer.passive {
            // Both sides connected: read the router's OPEN, then keep one
            // connection (RFC 4271 6.8) in `on_candidate`.
            let Ok(permit) = candidates.clone().try_reserve_owned() else {
                self.metrics.dropped("bgp_candidates");
                return;
            };
            let name = self.peer.name.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), read_open(stream)).await {
                    Ok(Ok(c)) => {
                        permit.send(c);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %name, error = %e, "incoming connection closed before a valid OPEN")
                    }
                    Err(_) => {
                        tracing::debug!(peer = %name, "incoming connection sent no OPEN within 10 s; closed")
                    }
                }
            });
            return;
        }
        if st.conn.is_some() {
            // Only the router connects to a passive peer, so a second
            // connection means it restarted and our old session is dead
            // (we would otherwise wait out the hold timer). Replace it,
            // as a graceful-restart helper does (RFC 4724 4.2).
            tracing::info!(peer = %self.peer.name, "the router opened a new connection: replacing the old session");
            self.feed(st, table, Event::TcpFailed).await;
            self.feed(st, table, Event::Start).await;
        }
        tracing::info!(peer = %self.peer.name, "accepted a connection");
        st.conn = Some(stream);
        st.outgoing = false;
        self.feed(st, table, Event::TcpConnected).await;
    }

    /// A connection the router opened while ours existed, with its OPEN:
    /// the collision rule keeps one.
    async fn on_candidate(
        &self,
        st: &mut State,
        table: &Table,
        mut stream: TcpStream,
        open: Open,
        rest: Vec<u8>,
    ) {
        match st.fsm.collision_with(open.router_id, st.outgoing) {
            fsm::Collision::KeepCurrent => {
                tracing::info!(peer = %self.peer.name, state = ?st.fsm.state(), router_id = %open.router_id, "connection collision: keeping the current connection, closing the router's new one");
                let bytes = codec::encode(
                    &Message::Notification(Notification::collision()),
                    &Wire::default(),
                );
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
            fsm::Collision::TakeIncoming(out) => {
                tracing::info!(peer = %self.peer.name, router_id = %open.router_id, "connection collision: taking the router's connection");
                self.apply(st, out, table).await;
                st.conn = Some(stream);
                st.rbuf = rest;
                st.outgoing = false;
                self.feed(st, table, Event::TcpConnected).await;
                self.feed(st, table, Event::Message(Message::Open(open)))
                    .await;
            }
        }
    }

    /// What the announcer told this peer, in order: service changes (merged
    /// while consecutive), new advertisements, or the end.
    async fn on_inputs(
        &mut self,
        st: &mut State,
        table: &mut Table,
        queue: Vec<PeerInput>,
    ) -> Flow {
        let mut batch: Vec<Change> = Vec::new();
        for input in queue {
            let input = match input {
                PeerInput::Changes(c) => {
                    batch.extend(c.iter().cloned());
                    continue;
                }
                other => other,
            };
            let touched = table.apply(&std::mem::take(&mut batch));
            self.sync_services(st, &touched).await;
            match input {
                PeerInput::Advertisements(ads) => {
                    tracing::info!(peer = %self.peer.name, "advertisements changed: sending the differences");
                    self.ads = ads;
                    self.sync(st, table).await;
                }
                PeerInput::Stop { reason, forget } => {
                    self.feed(st, table, Event::Stop(reason.into())).await;
                    if forget {
                        self.forget();
                    }
                    return Flow::Stop;
                }
                PeerInput::Changes(_) => {}
            }
        }
        let touched = table.apply(&batch);
        self.sync_services(st, &touched).await;
        Flow::Continue
    }

    /// Our connect finished.
    async fn on_connected(
        &self,
        st: &mut State,
        table: &Table,
        result: std::io::Result<TcpStream>,
    ) {
        st.connecting = None;
        let ev = match result {
            Ok(stream) => {
                tracing::info!(peer = %self.peer.name, address = %self.peer.address, "connected");
                st.conn = Some(stream);
                st.outgoing = true;
                Event::TcpConnected
            }
            Err(e) => {
                self.connect_failed(st, &e);
                Event::TcpFailed
            }
        };
        self.feed(st, table, ev).await;
    }

    /// Bytes from the router (`None`: the connection ended or failed):
    /// every whole message in the buffer goes to the state machine.
    async fn on_read(&self, st: &mut State, table: &Table, got: Option<&[u8]>) {
        let Some(bytes) = got else {
            self.feed(st, table, Event::TcpFailed).await;
            return;
        };
        st.rbuf.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            match codec::decode(&st.rbuf, &st.wire) {
                Ok(Some((m, used))) => {
                    st.rbuf.drain(..used);
                    events.push(Event::Message(m));
                }
                Ok(None) => break,
                Err(e) if e.action == codec::Action::TreatAsWithdraw => {
                    // Only that UPDATE is bad; its header's length was checked,
                    // and the messages after it are read as usual.
                    let used = u16::from_be_bytes([st.rbuf[16], st.rbuf[17]]) as usize;
                    st.rbuf.drain(..used.min(st.rbuf.len()));
                    events.push(Event::Malformed(e));
                }
                Err(e) => {
                    st.rbuf.clear();
                    events.push(Event::Malformed(e));
                    break;
                }
            }
        }
        for ev in events {
            match &ev {
                Event::Message(Message::Update(_)) => {
                    self.metrics
                        .bgp_updates
                        .get_or_create(&self.dir("received"))
                        .inc();
                }
                Event::Message(Message::Notification(_)) => {
                    self.metrics
                        .bgp_notifications
                        .get_or_create(&self.dir("received"))
                        .inc();
                }
                _ => {}
            }
            self.feed(st, table, ev).await;
        }
    }

    /// Timers that are due, in a fixed order.
    async fn on_timers(&self, st: &mut State, table: &Table) {
        let now = Instant::now();
        for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
            if st.timers[timer_index(t)].is_some_and(|d| d <= now) {
                st.timers[timer_index(t)] = None;
                self.feed(st, table, Event::Expired(t)).await;
            }
        }
    }

    /// A connect that failed, or that the connect-retry timer abandoned
    /// unanswered: logged at debug, and once a minute as a warning with a
    /// hint, since a router that refuses, or drops SYNs over a TCP-MD5 key
    /// mismatch, is retried forever.
    fn connect_failed(&self, st: &mut State, e: &std::io::Error) {
        tracing::debug!(peer = %self.peer.name, error = %e, "connect failed");
        if let Some(held) = st.connect_warn.allow(std::time::Instant::now()) {
            let hint = if e.kind() == std::io::ErrorKind::TimedOut && self.peer.password.is_some() {
                "no answer to the SYN: with TCP-MD5 a wrong or missing key on either side makes the router drop it silently (check `nstat -az TcpExtTCPMD5Unexpected TcpExtTCPMD5Failure` on both)"
            } else if e.kind() == std::io::ErrorKind::TimedOut {
                "no answer to the SYN: is the router up, and does a firewall let TCP to its port through?"
            } else if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "the router refused: is BGP configured for this node's address there, and on this port?"
            } else {
                "retrying with back-off"
            };
            tracing::warn!(peer = %self.peer.name, address = %self.peer.address, error = %e, repeats_not_logged = held, hint, "cannot connect to the BGP peer");
        }
    }

    /// Removes this peer's series: it left the configuration.
    fn forget(&self) {
        let labels = self.labels();
        self.metrics.bgp_session_up.remove(&labels);
        self.metrics.bgp_prefixes.remove(&labels);
        self.metrics.bgp_last_change.remove(&labels);
        self.metrics.bfd_session_up.remove(&labels);
        for direction in ["sent", "received"] {
            self.metrics.bgp_updates.remove(&self.dir(direction));
            self.metrics.bgp_notifications.remove(&self.dir(direction));
        }
    }

    fn dir(&self, direction: &str) -> crate::metrics::PeerDirectionLabels {
        crate::metrics::PeerDirectionLabels {
            peer: self.peer.name.clone(),
            direction: direction.to_string(),
        }
    }

    fn mark_change(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.metrics
            .bgp_last_change
            .get_or_create(&self.labels())
            .set(now);
    }

    async fn send(&self, st: &mut State, bytes: &[u8]) {
        if let Some(c) = st.conn.as_mut() {
            if c.write_all(bytes).await.is_err() {
                st.pending.push(Event::TcpFailed);
            }
        }
    }

    /// Carries out the state machine's outputs, then any events they caused.
    async fn apply(&self, st: &mut State, mut out: Vec<Output>, services: &Table) {
        loop {
            for o in out {
                match o {
                    Output::Connect => {
                        if std::mem::take(&mut st.abandoned) {
                            // The connect-retry timer (2 s) fired before the
                            // connect's own timeout and the FSM starts over:
                            // the last SYN went unanswered.
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no answer before the connect-retry timer",
                            );
                            self.connect_failed(st, &e);
                        }
                        st.connecting = Some(Box::pin(connect(self.peer.clone())));
                    }
                    Output::Disconnect => {
                        if let Some(mut c) = st.conn.take() {
                            let _ = c.shutdown().await;
                        }
                        st.rbuf.clear();
                        st.advertised.clear();
                        st.hops = None;
                        st.rib = None;
                        // Only the connect-retry restart leaves the FSM in Connect.
                        st.abandoned =
                            st.connecting.take().is_some() && st.fsm.state() == fsm::State::Connect;
                    }
                    Output::Send(m) => {
                        let kind = match &m {
                            Message::Notification(_) => Some("notifications"),
                            Message::Update(_) => Some("updates"),
                            _ => None,
                        };
                        let bytes = codec::encode(&m, &st.wire);
                        self.send(st, &bytes).await;
                        match kind {
                            Some("notifications") => self
                                .metrics
                                .bgp_notifications
                                .get_or_create(&self.dir("sent"))
                                .inc(),
                            Some(_) => self
                                .metrics
                                .bgp_updates
                                .get_or_create(&self.dir("sent"))
                                .inc(),
                            None => 0,
                        };
                    }
                    Output::StartTimer(t, d) => {
                        st.timers[timer_index(t)] = Some(Instant::now() + d)
                    }
                    Output::StopTimer(t) => st.timers[timer_index(t)] = None,
                    Output::Established(n) => {
                        tracing::info!(peer = %self.peer.name, hold = n.hold_time, four_octet = n.four_octet, families = ?n.families, "session established");
                        st.wire = Wire {
                            four_octet: n.four_octet,
                        };
                        st.families = n.families.clone();
                        self.metrics
                            .bgp_session_up
                            .get_or_create(&self.labels())
                            .set(1);
                        self.mark_change();
                        self.sync(st, services).await;
                        for afi in n.families {
                            let eor =
                                codec::encode(&Message::Update(Update::end_of_rib(afi)), &st.wire);
                            self.send(st, &eor).await;
                        }
                    }
                    Output::Down(reason) => {
                        tracing::warn!(peer = %self.peer.name, %reason, "session down");
                        self.metrics
                            .bgp_session_up
                            .get_or_create(&self.labels())
                            .set(0);
                        self.mark_change();
                        self.metrics
                            .bgp_prefixes
                            .get_or_create(&self.labels())
                            .set(0);
                        st.families.clear();
                    }
                    Output::Received(_) => {}
                    Output::TreatAsWithdraw(routes) => {
                        self.metrics
                            .bgp_treat_as_withdraw
                            .get_or_create(&self.labels())
                            .inc();
                        tracing::warn!(peer = %self.peer.name, routes = routes.len(), "malformed UPDATE treated as withdraw (RFC 7606)");
                    }
                    Output::Refresh(_) => {
                        // Re-send everything the peer should have.
                        st.advertised.clear();
                        st.hops = None;
                        st.rib = None;
                        self.sync(st, services).await;
                    }
                }
            }
            if st.pending.is_empty() {
                return;
            }
            let ev = st.pending.remove(0);
            out = st.fsm.handle(ev);
        }
    }

    /// Sends the difference between what the peer has and what it should
    /// have, over every route (a new session, a route refresh).
    async fn sync(&self, st: &mut State, services: &Table) {
        let Some(hops) = self.session_hops(st) else {
            return;
        };
        let mut rib = Rib::default();
        for s in services.iter() {
            rib.set(&s.key, policy::routes(s, &self.ads, &self.peer, hops));
        }
        let touched: BTreeSet<Prefix> = rib
            .routes()
            .map(|(p, _)| *p)
            .chain(st.advertised.keys().copied())
            .collect();
        st.rib = Some(rib);
        self.send_differences(st, &touched, hops).await;
    }

    /// Sends what changed for the services that changed: work in proportion
    /// to them, not to the table.
    async fn sync_services(
        &self,
        st: &mut State,
        touched: &BTreeMap<String, crate::announce::Touched>,
    ) {
        if touched.is_empty() {
            return;
        }
        let Some(hops) = self.session_hops(st) else {
            return;
        };
        let Some(rib) = st.rib.as_mut() else {
            return;
        };
        let mut prefixes = BTreeSet::new();
        for (key, (_, after)) in touched {
            let routes = after
                .as_ref()
                .map(|s| policy::routes(s, &self.ads, &self.peer, hops))
                .unwrap_or_default();
            prefixes.extend(rib.set(key, routes));
        }
        self.send_differences(st, &prefixes, hops).await;
    }

    /// The next hops of the established session (found once per session).
    fn session_hops(&self, st: &mut State) -> Option<NextHops> {
        if st.fsm.state() != fsm::State::Established {
            return None;
        }
        let local = st
            .conn
            .as_ref()
            .and_then(|c| c.local_addr().ok())
            .map(|a| a.ip())?;
        Some(*st.hops.get_or_insert_with(|| {
            let other = if self.peer.next_hop_v4.is_some() && self.peer.next_hop_v6.is_some() {
                None
            } else {
                other_family_address(local)
            };
            let hops = NextHops::for_session(&self.peer, local, other);
            if hops.v4.is_none() || hops.v6.is_none() {
                let missing = if hops.v4.is_none() { "IPv4 (nextHopIPv4)" } else { "IPv6 (nextHopIPv6)" };
                tracing::info!(peer = %self.peer.name, %local, "no {missing} next hop on this session's interface: those routes are not sent to this peer");
            }
            hops
        }))
    }

    /// Withdraws and announces what differs, among `touched`, between the
    /// wanted routes and what the peer has.
    async fn send_differences(&self, st: &mut State, touched: &BTreeSet<Prefix>, hops: NextHops) {
        let Some(rib) = st.rib.as_ref() else {
            return;
        };
        let mut gone: Vec<Prefix> = Vec::new();
        let mut by_attrs: Vec<(Arc<Attrs>, Vec<Prefix>)> = Vec::new();
        let mut now: Vec<(Prefix, Option<Arc<Attrs>>)> = Vec::new();
        for p in touched {
            let want = rib.want(p).filter(|_| st.families.contains(&p.afi()));
            let have = st.advertised.get(p);
            match (want, have) {
                (None, None) => {}
                (None, Some(_)) => {
                    gone.push(*p);
                    now.push((*p, None));
                }
                (Some(a), h) if h != Some(a) => {
                    match by_attrs.iter_mut().find(|(x, _)| x == a) {
                        Some((_, list)) => list.push(*p),
                        None => by_attrs.push((Arc::clone(a), vec![*p])),
                    }
                    now.push((*p, Some(Arc::clone(a))));
                }
                _ => {}
            }
        }
        if now.is_empty() {
            return;
        }
        let nh6 = hops.v6;
        let mut messages = codec::pack_withdrawals(&gone, &st.wire);
        for (attrs, prefixes) in &by_attrs {
            messages.extend(codec::pack(attrs, prefixes, nh6, &st.wire));
        }
        for m in messages {
            self.send(st, &m).await;
            self.metrics
                .bgp_updates
                .get_or_create(&self.dir("sent"))
                .inc();
        }
        for (p, a) in now {
            match a {
                Some(a) => st.advertised.insert(p, a),
                None => st.advertised.remove(&p),
            };
        }
        let announced = by_attrs.iter().map(|(_, p)| p.len()).sum::<usize>();
        if touched.len() > 16 {
            tracing::info!(peer = %self.peer.name, announced, withdrawn = gone.len(), advertised = st.advertised.len(), "routes updated");
        } else {
            tracing::debug!(peer = %self.peer.name, announced, withdrawn = gone.len(), advertised = st.advertised.len(), "routes updated");
        }
        self.metrics
            .bgp_prefixes
            .get_or_create(&self.labels())
            .set(st.advertised.len() as i64);
    }
}

struct State {
    fsm: Session,
    conn: Option<TcpStream>,
    rbuf: Vec<u8>,
    timers: [Option<Instant>; 3],
    connecting: Option<Connecting>,
    wire: Wire,
    /// What the peer has: attributes shared with the [`Rib`] they came from.
    advertised: BTreeMap<Prefix, Arc<Attrs>>,
    families: Vec<Afi>,
    pending: Vec<Event>,
    /// Next hops of the current session, found when it is established.
    hops: Option<NextHops>,
    /// Whether the current connection is the one we opened.
    outgoing: bool,
    /// The routes this peer should have (per service), while established.
    rib: Option<Rib>,
    /// One connect warning a minute.
    connect_warn: ferrolb_ops::RateLimit,
    /// The last Disconnect dropped a connect still in progress.
    abandoned: bool,
}
