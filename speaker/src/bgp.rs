//! BGP mode: one task per peer owns the TCP connection and the timers, runs
//! the pure session state machine (`ferrolb_bgp::fsm`), and advertises the
//! healthy services' VIPs as the `advertisements` describe, sending only
//! differences after the initial table and End-of-RIB.

use crate::announce::{Announcer, ServiceVips};
use crate::metrics::{Metrics, PeerLabels};
use ferrolb_bgp::codec::{self, Session as Wire};
use ferrolb_bgp::fsm::{self, Event, Output, Session, Timer};
use ferrolb_bgp::message::*;
use ferrolb_config::{BgpAdvertisement, Peer, PeerPassword};
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
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Peers this node talks to (node selectors already applied).
    pub peers: Vec<Peer>,
    /// What to announce.
    pub advertisements: Vec<BgpAdvertisement>,
}

/// The handle standalone mode talks to.
pub struct BgpAnnouncer {
    services: watch::Sender<Vec<ServiceVips>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// VIPs made local so traffic the routers send here is accepted.
    local: crate::host::LocalRoutes,
}

impl Announcer for BgpAnnouncer {
    fn name(&self) -> &'static str {
        "bgp"
    }

    fn update(&mut self, services: &[ServiceVips]) {
        // Local before advertised, so the first packet a router sends is accepted.
        let advertised = services
            .iter()
            .filter(|s| s.healthy)
            .flat_map(|s| s.vips.iter().copied());
        if let Err(e) = self.local.ensure(advertised) {
            tracing::error!(error = %e, "VIP traffic routed to this node will be dropped");
        }
        self.services.send_replace(services.to_vec());
    }

    fn stop(&mut self) -> Vec<JoinHandle<()>> {
        self.stop.send_replace(true);
        std::mem::take(&mut self.tasks)
    }
}

/// Starts one session task per peer (and BFD for the peers that ask for it).
pub async fn start(opts: Options, metrics: Arc<Metrics>) -> std::io::Result<BgpAnnouncer> {
    let (services, rx) = watch::channel(Vec::new());
    let (stop, stop_rx) = watch::channel(false);
    let hub = if opts.peers.iter().any(|p| p.bfd.is_some()) {
        Some(crate::bfd::Hub::start().await?)
    } else {
        None
    };
    // Passive peers: one listener on port 179 hands each accepted connection to its peer's task.
    let mut inboxes: HashMap<IpAddr, mpsc::UnboundedReceiver<TcpStream>> = HashMap::new();
    let passive: Vec<&Peer> = opts.peers.iter().filter(|p| p.passive).collect();
    if !passive.is_empty() {
        let mut routes = HashMap::new();
        for p in &passive {
            let (tx, rx) = mpsc::unbounded_channel();
            routes.insert(p.address, tx);
            inboxes.insert(p.address, rx);
        }
        listen(&passive, routes)?;
    }
    let mut tasks = Vec::new();
    for (i, p) in opts.peers.iter().enumerate() {
        let bfd = match (&hub, &p.bfd) {
            (Some(h), Some(b)) => Some(h.session(
                p.address,
                &p.name,
                crate::bfd::config(b, i as u32 + 1),
                Arc::clone(&metrics),
            )),
            _ => None,
        };
        let peer = PeerTask {
            peer: p.clone(),
            router_id: opts.router_id,
            ads: opts.advertisements.clone(),
            metrics: Arc::clone(&metrics),
        };
        tasks.push(tokio::spawn(peer.run(
            rx.clone(),
            stop_rx.clone(),
            bfd,
            inboxes.remove(&p.address),
        )));
    }
    Ok(BgpAnnouncer {
        services,
        stop,
        local: crate::host::LocalRoutes::default(),
        tasks,
    })
}

/// Listens on port 179 for the passive peers (with their TCP-MD5 keys set
/// on the listening socket) and routes each connection to its peer.
fn listen(
    peers: &[&Peer],
    routes: HashMap<IpAddr, mpsc::UnboundedSender<TcpStream>>,
) -> std::io::Result<()> {
    let routes = Arc::new(routes);
    for v6 in [false, true] {
        let family: Vec<&&Peer> = peers.iter().filter(|p| p.address.is_ipv6() == v6).collect();
        if family.is_empty() {
            continue;
        }
        let port = family[0].port;
        let addr = if v6 {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port)
        } else {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if v6 {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        for p in &family {
            if let Some(key) = password(p)? {
                ferrolb_sys::set_tcp_md5(&socket, p.address, &key)?;
            }
        }
        socket.bind(&addr.into())?;
        socket.listen(64)?;
        socket.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    continue;
                };
                match routes.get(&from.ip()) {
                    Some(tx) => {
                        let _ = stream.set_nodelay(true);
                        let _ = tx.send(stream);
                    }
                    None => {
                        tracing::debug!(%from, "refused a BGP connection from an unknown address")
                    }
                }
            }
        });
    }
    Ok(())
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
        None => None,
    })
}

/// Routes this node wants a peer to have: prefix -> attributes. With no
/// advertisements configured, every healthy VIP goes to every peer.
pub fn desired(
    services: &[ServiceVips],
    ads: &[BgpAdvertisement],
    peer: &Peer,
    local: IpAddr,
) -> BTreeMap<Prefix, Attrs> {
    let fallback = [BgpAdvertisement::default()];
    let ads = if ads.is_empty() { &fallback[..] } else { ads };
    let mut out = BTreeMap::new();
    for s in services.iter().filter(|s| s.healthy) {
        for ad in ads {
            if !(ad.pools.is_empty() || ad.pools.contains(&s.pool))
                || !(ad.peers.is_empty() || ad.peers.contains(&peer.name))
            {
                continue;
            }
            for vip in &s.vips {
                // Routes travel over a session of their own family, whose local address is their next hop.
                if vip.is_ipv4() != local.is_ipv4() {
                    continue;
                }
                let len = if vip.is_ipv4() {
                    ad.aggregation_length
                } else {
                    ad.aggregation_length_v6
                };
                let Some(prefix) = Prefix::new(*vip, len) else {
                    continue;
                };
                let attrs = Attrs {
                    origin: Some(Origin::Igp),
                    as_path: Some(if peer.is_ebgp() {
                        vec![Segment::Sequence(vec![peer.my_asn])]
                    } else {
                        vec![]
                    }),
                    next_hop: match local {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    },
                    local_pref: if peer.is_ebgp() { None } else { ad.local_pref },
                    communities: ad.communities.iter().map(|c| c.0).collect(),
                    large_communities: ad
                        .large_communities
                        .iter()
                        .map(|c| (c.0, c.1, c.2))
                        .collect(),
                    ..Attrs::default()
                };
                out.entry(prefix).or_insert(attrs);
            }
        }
    }
    out
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

struct PeerTask {
    peer: Peer,
    router_id: Ipv4Addr,
    ads: Vec<BgpAdvertisement>,
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
    if let Some(pw) = &peer.password {
        let key = match pw {
            PeerPassword::Inline(k) => k.clone().into_bytes(),
            PeerPassword::File(path) => std::fs::read_to_string(path)?
                .trim_end()
                .as_bytes()
                .to_vec(),
        };
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
        self,
        mut services: watch::Receiver<Vec<ServiceVips>>,
        mut stop: watch::Receiver<bool>,
        mut bfd: Option<watch::Receiver<bool>>,
        mut inbox: Option<mpsc::UnboundedReceiver<TcpStream>>,
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
        };
        let out = st.fsm.handle(Event::Start);
        {
            let current = services.borrow().clone();
            self.apply(&mut st, out, &current).await;
        }
        let mut buf = vec![0u8; 65_536];
        loop {
            let deadline = st.timers.iter().flatten().min().copied();
            tokio::select! {
                _ = async { crate::bfd::down(bfd.as_mut().expect("guarded")).await }, if bfd.is_some() => {
                    // The path failed: do not wait for the hold timer (RFC 5882).
                    tracing::warn!(peer = %self.peer.name, "BFD declared the path down; closing the session");
                    let out = st.fsm.handle(Event::TcpFailed);
                    let current = services.borrow().clone();
                    self.apply(&mut st, out, &current).await;
                }
                incoming = async { inbox.as_mut().expect("guarded").recv().await }, if inbox.is_some() => {
                    match incoming {
                        Some(stream) => {
                            let current = services.borrow().clone();
                            if st.conn.is_some() {
                                // Only the router connects to a passive peer, so a second
                                // connection means it restarted and our old session is dead
                                // (we would otherwise wait out the hold timer). Replace it,
                                // as a graceful-restart helper does (RFC 4724 4.2).
                                tracing::info!(peer = %self.peer.name, "the router opened a new connection: replacing the old session");
                                let out = st.fsm.handle(Event::TcpFailed);
                                self.apply(&mut st, out, &current).await;
                                let out = st.fsm.handle(Event::Start);
                                self.apply(&mut st, out, &current).await;
                            }
                            tracing::info!(peer = %self.peer.name, "accepted a connection");
                            st.conn = Some(stream);
                            let out = st.fsm.handle(Event::TcpConnected);
                            self.apply(&mut st, out, &current).await;
                        }
                        None => inbox = None,
                    }
                }
                _ = crate::forwarder::until_set(&mut stop) => {
                    let out = st.fsm.handle(Event::Stop("ferrolb speaker shutting down".into()));
                    {
                        let current = services.borrow().clone();
                        self.apply(&mut st, out, &current).await;
                    }
                    return;
                }
                changed = services.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = services.borrow_and_update().clone();
                    self.sync(&mut st, &current).await;
                }
                result = async { st.connecting.as_mut().expect("guarded").await }, if st.connecting.is_some() => {
                    st.connecting = None;
                    let ev = match result {
                        Ok(stream) => {
                            tracing::info!(peer = %self.peer.name, address = %self.peer.address, "connected");
                            st.conn = Some(stream);
                            Event::TcpConnected
                        }
                        Err(e) => {
                            tracing::debug!(peer = %self.peer.name, error = %e, "connect failed");
                            Event::TcpFailed
                        }
                    };
                    let out = st.fsm.handle(ev);
                    {
                        let current = services.borrow().clone();
                        self.apply(&mut st, out, &current).await;
                    }
                }
                read = async { st.conn.as_mut().expect("guarded").read(&mut buf).await }, if st.conn.is_some() => {
                    let events = match read {
                        Ok(0) | Err(_) => vec![Event::TcpFailed],
                        Ok(n) => {
                            st.rbuf.extend_from_slice(&buf[..n]);
                            let mut evs = Vec::new();
                            loop {
                                match codec::decode(&st.rbuf, &st.wire) {
                                    Ok(Some((m, used))) => {
                                        st.rbuf.drain(..used);
                                        evs.push(Event::Message(m));
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        st.rbuf.clear();
                                        evs.push(Event::Malformed(e));
                                        break;
                                    }
                                }
                            }
                            evs
                        }
                    };
                    for ev in events {
                        match &ev {
                            Event::Message(Message::Update(_)) => {
                                self.metrics.bgp_updates.get_or_create(&self.dir("received")).inc();
                            }
                            Event::Message(Message::Notification(_)) => {
                                self.metrics.bgp_notifications.get_or_create(&self.dir("received")).inc();
                            }
                            _ => {}
                        }
                        let out = st.fsm.handle(ev);
                        {
                        let current = services.borrow().clone();
                        self.apply(&mut st, out, &current).await;
                    }
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    let now = Instant::now();
                    for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
                        if st.timers[timer_index(t)].is_some_and(|d| d <= now) {
                            st.timers[timer_index(t)] = None;
                            let out = st.fsm.handle(Event::Expired(t));
                            {
                        let current = services.borrow().clone();
                        self.apply(&mut st, out, &current).await;
                    }
                        }
                    }
                }
            }
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
    async fn apply(&self, st: &mut State, mut out: Vec<Output>, services: &[ServiceVips]) {
        loop {
            for o in out {
                match o {
                    Output::Connect => st.connecting = Some(Box::pin(connect(self.peer.clone()))),
                    Output::Disconnect => {
                        if let Some(mut c) = st.conn.take() {
                            let _ = c.shutdown().await;
                        }
                        st.rbuf.clear();
                        st.advertised.clear();
                        st.connecting = None;
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
                        tracing::warn!(peer = %self.peer.name, routes = routes.len(), "malformed UPDATE treated as withdraw (RFC 7606)");
                    }
                    Output::Refresh(_) => {
                        // Re-send everything the peer should have.
                        st.advertised.clear();
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

    /// Sends the difference between what the peer has and what it should have.
    async fn sync(&self, st: &mut State, services: &[ServiceVips]) {
        if st.fsm.state() != fsm::State::Established {
            return;
        }
        let Some(local) = st
            .conn
            .as_ref()
            .and_then(|c| c.local_addr().ok())
            .map(|a| a.ip())
        else {
            return;
        };
        let want: BTreeMap<Prefix, Attrs> = desired(services, &self.ads, &self.peer, local)
            .into_iter()
            .filter(|(p, _)| st.families.contains(&p.afi()))
            .collect();
        let gone: Vec<Prefix> = st
            .advertised
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        let mut by_attrs: Vec<(Attrs, Vec<Prefix>)> = Vec::new();
        for (p, a) in &want {
            if st.advertised.get(p) == Some(a) {
                continue;
            }
            match by_attrs.iter_mut().find(|(x, _)| x == a) {
                Some((_, list)) => list.push(*p),
                None => by_attrs.push((a.clone(), vec![*p])),
            }
        }
        let nh6 = match local {
            IpAddr::V6(a) => Some(a),
            _ => None,
        };
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
        let changed: BTreeSet<Prefix> = gone
            .iter()
            .copied()
            .chain(by_attrs.iter().flat_map(|(_, p)| p.iter().copied()))
            .collect();
        if !changed.is_empty() {
            tracing::info!(peer = %self.peer.name, announced = want.len(), withdrawn = gone.len(), "routes updated");
        }
        st.advertised = want;
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
    advertised: BTreeMap<Prefix, Attrs>,
    families: Vec<Afi>,
    pending: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(ads: &str) -> (Vec<ServiceVips>, ferrolb_config::Bgp) {
        let cfg = ferrolb_config::Config::from_yaml(&format!(
            "pools: [{{name: a, addresses: [203.0.113.0/28]}}, {{name: b, addresses: [198.51.100.0/28]}}]
bgp:
  peers:
    - {{name: r1, address: 192.0.2.1, asn: 65000, myAsn: 65001}}
    - {{name: r2, address: 192.0.2.2, asn: 65001, myAsn: 65001}}
{ads}"
        ))
        .expect("valid config");
        let vips = |key: &str, pool: &str, ip: &str, healthy| ServiceVips {
            key: key.into(),
            pool: pool.into(),
            vips: vec![ip.parse().unwrap()],
            healthy,
        };
        let services = vec![
            vips("web", "a", "203.0.113.1", true),
            vips("api", "b", "198.51.100.1", true),
            vips("down", "a", "203.0.113.2", false),
        ];
        (services, cfg.bgp.expect("bgp section"))
    }

    fn prefixes(routes: &BTreeMap<Prefix, Attrs>) -> Vec<String> {
        routes.keys().map(|p| format!("{p:?}")).collect()
    }

    #[test]
    fn without_advertisements_every_healthy_vip_goes_to_every_peer() {
        let (services, bgp) = setup("");
        let local: IpAddr = "192.0.2.11".parse().unwrap();
        for peer in &bgp.peers {
            let routes = desired(&services, &bgp.advertisements, peer, local);
            assert_eq!(routes.len(), 2, "{peer:?}: {:?}", prefixes(&routes));
            assert!(routes
                .values()
                .all(|a| a.communities.is_empty() && a.local_pref.is_none()));
        }
    }

    #[test]
    fn advertisements_select_pools_and_peers_and_local_pref_is_ibgp_only() {
        let (services, bgp) = setup(
            "  advertisements: [{pools: [a], peers: [r1, r2], localPref: 200}, {pools: [b], peers: [r2]}]",
        );
        let local: IpAddr = "192.0.2.11".parse().unwrap();
        let r1 = desired(&services, &bgp.advertisements, &bgp.peers[0], local);
        let r2 = desired(&services, &bgp.advertisements, &bgp.peers[1], local);
        assert_eq!(r1.len(), 1, "{:?}", prefixes(&r1));
        assert_eq!(
            r1.values().next().unwrap().local_pref,
            None,
            "eBGP: no LOCAL_PREF"
        );
        assert_eq!(r2.len(), 2, "{:?}", prefixes(&r2));
        let web = r2
            .iter()
            .find(|(p, _)| format!("{p:?}").contains("203.0.113.1"))
            .expect("web to r2");
        assert_eq!(web.1.local_pref, Some(200), "iBGP carries LOCAL_PREF");
        assert_eq!(web.1.as_path, Some(vec![]), "iBGP: empty AS path");
    }
}
