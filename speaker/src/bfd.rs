//! BFD (RFC 5880/5881, single hop, asynchronous mode) for BGP peers: a hub
//! receives every control packet on UDP 3784 and hands it to the session of
//! its source address; each session task runs the pure state machine
//! (`ferrolb_bfd`) and tells its BGP peer when the path goes down.

use crate::metrics::{Metrics, PeerLabels};
use ferrolb_bfd::{Config, Control, Input, Output, Session};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The single-hop BFD control port (RFC 5881).
pub const PORT: u16 = 3784;

type Routes = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<Control>>>>;

/// Control packets waiting for one session (a peer sends a few per
/// interval; more means a flood, dropped).
const SESSION_QUEUE: usize = 16;

/// Receives control packets and dispatches them by source address.
#[derive(Clone)]
pub struct Hub {
    routes: Routes,
}

impl Hub {
    /// Binds UDP 3784 for both families (as available) and starts dispatching.
    pub async fn start(metrics: Arc<Metrics>) -> std::io::Result<Hub> {
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let mut bound = 0;
        for addr in [
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT),
        ] {
            let socket = match bind(addr) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "BFD listener not opened");
                    continue;
                }
            };
            bound += 1;
            let routes = Arc::clone(&routes);
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let mut buf = [0u8; 128];
                loop {
                    let Ok((n, from, ttl)) = recv(&socket, &mut buf).await else {
                        // Never spin on a failing socket.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    };
                    if !single_hop(ttl) {
                        // Forwarded (or spoofed from afar): single-hop BFD must ignore it.
                        tracing::debug!(%from, ?ttl, "BFD packet without TTL 255 dropped");
                        continue;
                    }
                    let Ok(c) = Control::decode(&buf[..n]) else {
                        continue;
                    };
                    let ip = match from.ip() {
                        IpAddr::V6(v6) => v6
                            .to_ipv4_mapped()
                            .map(IpAddr::V4)
                            .unwrap_or(IpAddr::V6(v6)),
                        v4 => v4,
                    };
                    if let Some(tx) = routes.lock().expect("lock poisoned").get(&ip) {
                        // Full: the session is behind; a dropped packet is what BFD tolerates.
                        if tx.try_send(c).is_err() {
                            metrics.dropped("bfd");
                        }
                    }
                }
            });
        }
        if bound == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "cannot listen on UDP 3784",
            ));
        }
        Ok(Hub { routes })
    }

    /// Starts a session with `peer`; the returned watch is true while BFD is up.
    /// `name` labels its metrics.
    pub fn session(
        &self,
        peer: IpAddr,
        name: &str,
        cfg: Config,
        metrics: Arc<Metrics>,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        self.routes.lock().expect("lock poisoned").insert(peer, tx);
        let (up_tx, up_rx) = watch::channel(false);
        let labels = PeerLabels {
            peer: name.to_string(),
        };
        metrics.bfd_session_up.get_or_create(&labels).set(0);
        tokio::spawn(run(peer, cfg, rx, up_tx, metrics, labels));
        up_rx
    }
}

impl Hub {
    /// Ends the sessions of every peer not in `peers` (a reconfiguration
    /// removed them or their BFD): their tasks see their queue close.
    pub fn retain(&self, peers: &std::collections::BTreeSet<IpAddr>) {
        self.routes
            .lock()
            .expect("lock poisoned")
            .retain(|a, _| peers.contains(a));
    }
}

/// The TTL every single-hop BFD packet is sent and must arrive with.
pub const GTSM_TTL: i32 = 255;

/// Whether a packet that arrived with `ttl` may be from a directly connected
/// neighbour. A packet whose TTL the kernel did not report is refused too:
/// it cannot be checked.
pub fn single_hop(ttl: Option<i32>) -> bool {
    ttl == Some(GTSM_TTL)
}

/// Receives one datagram: its length, sender and TTL (hop limit), if the
/// kernel reported one.
pub async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<i32>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage};
    use std::os::fd::AsRawFd;
    socket
        .async_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut *buf)];
            // Room for one int-sized control message (CMSG_SPACE(4) is 16 or 24
            // bytes); on the heap, which aligns it for cmsghdr as the kernel needs.
            let mut space = vec![0u8; 64];
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )?;
            let ttl = msg.cmsgs()?.find_map(|c| match c {
                ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => Some(t),
                _ => None,
            });
            let from = msg
                .address
                .as_ref()
                .and_then(|a| match a.family() {
                    Some(nix::sys::socket::AddressFamily::Inet) => {
                        a.as_sockaddr_in().map(|s| SocketAddr::V4((*s).into()))
                    }
                    Some(nix::sys::socket::AddressFamily::Inet6) => {
                        a.as_sockaddr_in6().map(|s| SocketAddr::V6((*s).into()))
                    }
                    _ => None,
                })
                .ok_or_else(|| std::io::Error::other("datagram without a sender address"))?;
            Ok((msg.bytes, from, ttl))
        })
        .await
}

/// The receiving socket. Single-hop BFD accepts only packets sent with TTL
/// (hop limit) 255, i.e. from a neighbour on the link (RFC 5881 section 5);
/// [`recv`] reports each packet's TTL so that others can be dropped.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Ask the kernel for each datagram's TTL / hop limit (IP_RECVTTL, IPV6_RECVHOPLIMIT).
    if addr.is_ipv6() {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvHopLimit, &true)?;
    } else {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvTtl, &true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

async fn run(
    peer: IpAddr,
    cfg: Config,
    mut rx: mpsc::Receiver<Control>,
    up: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    labels: PeerLabels,
) {
    let any: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = match UdpSocket::bind(SocketAddr::new(any, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%peer, error = %e, "cannot open a BFD socket");
            return;
        }
    };
    // Single hop: packets leave with TTL 255 so the peer can check they were not forwarded (RFC 5881 5).
    let _ = if peer.is_ipv4() {
        socket.set_ttl(255)
    } else {
        socket2::SockRef::from(&socket).set_unicast_hops_v6(255)
    };
    let dest = SocketAddr::new(peer, PORT);
    let epoch = Instant::now();
    let mut session = Session::new(cfg);
    loop {
        let deadline = epoch + session.next_deadline();
        let input = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => Input::Received(c),
                None => return,
            },
            _ = tokio::time::sleep_until(deadline) => Input::Tick(epoch.elapsed()),
        };
        for o in session.handle(input, epoch.elapsed()) {
            match o {
                Output::Send(p) => {
                    let _ = socket.send_to(&p, dest).await;
                }
                Output::Up => {
                    tracing::info!(%peer, "BFD up");
                    up.send_replace(true);
                    metrics.bfd_session_up.get_or_create(&labels).set(1);
                }
                Output::Down(diag) => {
                    tracing::warn!(%peer, ?diag, "BFD down: the path to the peer failed");
                    // Down is also reported for a session that never came up; count real losses only.
                    if up.send_replace(false) {
                        metrics.bfd_down.get_or_create(&labels).inc();
                    }
                    metrics.bfd_session_up.get_or_create(&labels).set(0);
                }
            }
        }
    }
}

/// The BFD configuration of a peer, with a discriminator unique on this host.
pub fn config(b: &ferrolb_config::Bfd, disc: u32) -> Config {
    Config {
        my_disc: disc.max(1),
        desired_min_tx: b.transmit_interval,
        required_min_rx: b.receive_interval,
        detect_mult: b.detect_multiplier,
        passive: b.passive,
    }
}

/// Keeps the BGP session in step with BFD: resolves when an up BFD session goes down.
pub async fn down(up: &mut watch::Receiver<bool>) {
    // Wait until it has been up, then until it is down.
    while !*up.borrow_and_update() {
        if up.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    while *up.borrow_and_update() {
        if up.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sends one datagram to `to` with the given TTL / hop limit.
    async fn send(to: SocketAddr, ttl: u32) {
        let any: SocketAddr = if to.is_ipv4() {
            "127.0.0.1:0".parse().unwrap()
        } else {
            "[::1]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).await.unwrap();
        if to.is_ipv4() {
            s.set_ttl(ttl).unwrap();
        } else {
            socket2::SockRef::from(&s).set_unicast_hops_v6(ttl).unwrap();
        }
        s.send_to(b"bfd", to).await.unwrap();
    }

    async fn received_ttl(r: &UdpSocket) -> Option<i32> {
        let mut buf = [0u8; 16];
        let (n, _, ttl) = tokio::time::timeout(Duration::from_millis(300), recv(r, &mut buf))
            .await
            .expect("the datagram arrives")
            .unwrap();
        assert_eq!(&buf[..n], b"bfd");
        ttl
    }

    #[tokio::test]
    async fn every_received_packet_carries_its_ttl() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(r) = bind(local.parse().unwrap()) else {
                // No IPv6 loopback on this host: nothing to check for that family.
                assert!(local.starts_with('['), "IPv4 loopback must work");
                continue;
            };
            let to = r.local_addr().unwrap();
            // The kernel reports each packet's TTL exactly, and the hub admits only 255.
            for (ttl, admitted) in [(64, false), (254, false), (255, true)] {
                send(to, ttl).await;
                let got = received_ttl(&r).await;
                assert_eq!(got, Some(ttl as i32), "{local}");
                assert_eq!(single_hop(got), admitted, "{local} TTL {ttl}");
            }
            assert!(!single_hop(None));
        }
    }
}
