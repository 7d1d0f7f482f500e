//! The UDP proxy: one upstream socket per client flow (source address and
//! port), replies sent back from the VIP socket, flows forgotten after an
//! idle timeout, and a bounded flow table that evicts the oldest flow.
//!
//! The hot path is batched: after one readiness event the socket is drained
//! with non-blocking receives and sends, so a burst costs one trip through
//! the reactor rather than one per datagram.

use super::port::{Backend, PortRuntime};
use crate::metrics::DirectionLabels;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    /// One receive buffer per worker thread for backend replies.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// Datagrams handled per readiness event before yielding to other tasks.
const BATCH: usize = 256;

/// Socket buffer asked for on VIP and upstream sockets, to absorb bursts
/// (the kernel caps it at net.core.rmem_max / wmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

struct Flow {
    upstream: Arc<UdpSocket>,
    backend: Arc<Backend>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    replies: JoinHandle<()>,
    /// Distinguishes this flow from an earlier one of the same client in the eviction queue.
    generation: u64,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
        self.backend.active.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Table {
    flows: HashMap<SocketAddr, Flow>,
    order: VecDeque<(SocketAddr, u64)>,
    generation: u64,
}

/// Serves one UDP VIP:port until the port is stopped.
pub async fn serve(port: Arc<PortRuntime>, socket: UdpSocket) {
    let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket2::SockRef::from(&socket).set_send_buffer_size(SOCKET_BUFFER);
    let socket = Arc::new(socket);
    let epoch = Instant::now();
    let mut table = Table {
        flows: HashMap::new(),
        order: VecDeque::new(),
        generation: 0,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut stop = port.stop.subscribe();
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    let gauge = port.metrics.udp_flows.get_or_create(&port.labels).clone();
    let packets_in = port
        .metrics
        .udp_packets
        .get_or_create(&direction(&port, "in"))
        .clone();
    loop {
        tokio::select! {
            _ = super::until_set(&mut stop) => break,
            _ = sweep.tick() => {
                let idle = port.config().udp_idle_timeout.as_millis() as u64;
                let now = epoch.elapsed().as_millis() as u64;
                // A flow whose backend was removed and drained, or that idled out, goes.
                table.flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle && !f.backend.is_killed());
                let flows = &table.flows;
                table.order.retain(|(c, g)| flows.get(c).is_some_and(|f| f.generation == *g));
                gauge.set(table.flows.len() as i64);
            }
            ready = socket.readable() => {
                if ready.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let now = epoch.elapsed().as_millis() as u64;
                for _ in 0..BATCH {
                    let (n, client) = match socket.try_recv_from(&mut buf) {
                        Ok(x) => x,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            // ICMP errors surface here; they concern one peer, not the socket.
                            tracing::debug!(port = %port.key, error = %e, "udp receive error");
                            continue;
                        }
                    };
                    if forward(&port, &socket, &mut table, client, &buf[..n], now, epoch) {
                        packets_in.inc();
                    }
                }
                gauge.set(table.flows.len() as i64);
            }
        }
    }
    gauge.set(0);
}

/// Sends one client datagram to its flow's backend, opening the flow if
/// needed. Returns whether it was sent.
fn forward(
    port: &Arc<PortRuntime>,
    socket: &Arc<UdpSocket>,
    table: &mut Table,
    client: SocketAddr,
    payload: &[u8],
    now: u64,
    epoch: Instant,
) -> bool {
    if !port.service.allows(client.ip()) {
        port.reject("source_range");
        return false;
    }
    let stale = table
        .flows
        .get(&client)
        .is_some_and(|f| !f.backend.is_up() || f.backend.is_removed());
    if stale {
        // Its backend went down: this datagram starts a new flow elsewhere.
        table.flows.remove(&client);
    }
    if !table.flows.contains_key(&client) {
        let max = port.config().udp_max_flows.max(1);
        while table.flows.len() >= max {
            let Some((victim, g)) = table.order.pop_front() else {
                break;
            };
            if table.flows.get(&victim).is_some_and(|f| f.generation == g) {
                table.flows.remove(&victim);
                port.metrics.udp_evicted.get_or_create(&port.labels).inc();
            }
        }
        let Some(flow) = open_flow(port, socket, client, now, epoch, table.generation) else {
            return false;
        };
        table.order.push_back((client, table.generation));
        table.generation += 1;
        table.flows.insert(client, flow);
    }
    let flow = table.flows.get(&client).expect("inserted above");
    flow.last.store(now, Ordering::Relaxed);
    // Straight to the kernel: tokio's try_send refuses until the reactor has
    // seen the new socket become writable, which would drop a flow's first datagram.
    match socket2::SockRef::from(&*flow.upstream).send(payload) {
        Ok(_) => true,
        // A full send buffer drops the datagram, as a router would; UDP senders expect loss.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            port.reject("overload");
            false
        }
        // ECONNREFUSED from an earlier ICMP port unreachable: the backend socket is gone; start over next time.
        Err(e) => {
            tracing::debug!(port = %port.key, backend = %flow.backend.addr, error = %e, "udp send to backend failed");
            table.flows.remove(&client);
            false
        }
    }
}

fn direction(port: &PortRuntime, d: &str) -> DirectionLabels {
    DirectionLabels {
        service: port.labels.service.clone(),
        port: port.labels.port.clone(),
        direction: d.to_string(),
    }
}

fn upstream_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: IpAddr = if backend.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let std_socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
    std_socket.connect(backend)?;
    std_socket.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&std_socket).set_recv_buffer_size(SOCKET_BUFFER);
    UdpSocket::from_std(std_socket)
}

fn open_flow(
    port: &Arc<PortRuntime>,
    vip_socket: &Arc<UdpSocket>,
    client: SocketAddr,
    now: u64,
    epoch: Instant,
    generation: u64,
) -> Option<Flow> {
    let Some(backend) = port.pick(client.ip(), &[]) else {
        port.reject("no_backend");
        return None;
    };
    let upstream = match upstream_socket(backend.addr) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(port = %port.key, backend = %backend.addr, error = %e, "cannot open an upstream UDP socket");
            port.reject("connect_failed");
            return None;
        }
    };
    let last = Arc::new(AtomicU64::new(now));
    backend.active.fetch_add(1, Ordering::Relaxed);
    port.metrics
        .connections
        .get_or_create(backend.labels())
        .inc();
    let packets_out = port
        .metrics
        .udp_packets
        .get_or_create(&direction(port, "out"))
        .clone();
    let replies = tokio::spawn(replies(
        Arc::clone(&upstream),
        Arc::clone(vip_socket),
        client,
        Arc::clone(&last),
        epoch,
        packets_out,
    ));
    Some(Flow {
        upstream,
        backend,
        last,
        replies,
        generation,
    })
}

/// Relays a flow's replies from the backend to the client, from the VIP.
async fn replies(
    upstream: Arc<UdpSocket>,
    vip_socket: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
    packets_out: prometheus_client::metrics::counter::Counter,
) {
    loop {
        if upstream.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        for _ in 0..BATCH {
            // Received into this worker thread's scratch buffer and sent from
            // it at once: no allocation per datagram, and idle flows hold no
            // 64 KiB buffer of their own. Only a reply the VIP socket cannot
            // take now is copied out, to wait for room.
            let step = SCRATCH.with_borrow_mut(|buf| match upstream.try_recv(buf) {
                Ok(n) => {
                    last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match socket2::SockRef::from(&*vip_socket).send_to(&buf[..n], &client.into()) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            Ok(Some(buf[..n].to_vec()))
                        }
                        r => {
                            if r.is_ok() {
                                packets_out.inc();
                            }
                            Ok(None)
                        }
                    }
                }
                Err(e) => Err(e),
            });
            match step {
                Ok(None) => {}
                Ok(Some(waiting)) => {
                    if vip_socket.send_to(&waiting, client).await.is_ok() {
                        packets_out.inc();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ECONNREFUSED from an ICMP port unreachable: keep the flow; the idle timeout ends it.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    break;
                }
            }
        }
    }
}
