//! The UDP proxy: one upstream socket per client flow (source address and
//! port), replies sent back from the VIP socket, flows forgotten after an
//! idle timeout, and a bounded flow table that evicts the oldest flow.

use super::port::{Backend, PortRuntime};
use crate::metrics::DirectionLabels;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

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

/// Serves one UDP VIP:port until the port is stopped.
pub async fn serve(port: Arc<PortRuntime>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut order: VecDeque<(SocketAddr, u64)> = VecDeque::new();
    let mut generation = 0u64;
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
                flows.retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle && !f.backend.is_killed());
                order.retain(|(c, g)| flows.get(c).is_some_and(|f| f.generation == *g));
                gauge.set(flows.len() as i64);
            }
            received = socket.recv_from(&mut buf) => {
                let (n, client) = match received {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors surface here on some kernels; they concern one peer, not the socket.
                        tracing::debug!(port = %port.key, error = %e, "udp receive error");
                        continue;
                    }
                };
                if !port.service.allows(client.ip()) {
                    port.reject("source_range");
                    continue;
                }
                let now = epoch.elapsed().as_millis() as u64;
                let stale = flows.get(&client).is_some_and(|f| !f.backend.is_up() || f.backend.is_removed());
                if stale {
                    // Its backend went down: the next datagram starts a new flow elsewhere.
                    flows.remove(&client);
                }
                if !flows.contains_key(&client) {
                    let max = port.config().udp_max_flows.max(1);
                    while flows.len() >= max {
                        let Some((victim, g)) = order.pop_front() else { break };
                        if flows.get(&victim).is_some_and(|f| f.generation == g) {
                            flows.remove(&victim);
                            port.metrics.udp_evicted.get_or_create(&port.labels).inc();
                        }
                    }
                    let Some(flow) = open_flow(&port, &socket, client, now, epoch, generation).await else {
                        continue;
                    };
                    order.push_back((client, generation));
                    generation += 1;
                    flows.insert(client, flow);
                    gauge.set(flows.len() as i64);
                }
                let flow = flows.get(&client).expect("inserted above");
                flow.last.store(now, Ordering::Relaxed);
                if let Err(e) = flow.upstream.send(&buf[..n]).await {
                    tracing::debug!(port = %port.key, backend = %flow.backend.addr, error = %e, "udp send to backend failed");
                    flows.remove(&client);
                    continue;
                }
                packets_in.inc();
            }
        }
    }
    gauge.set(0);
}

fn direction(port: &PortRuntime, d: &str) -> DirectionLabels {
    DirectionLabels {
        service: port.labels.service.clone(),
        port: port.labels.port.clone(),
        direction: d.to_string(),
    }
}

async fn open_flow(
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
    let any: IpAddr = if backend.addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let upstream = match UdpSocket::bind(SocketAddr::new(any, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(port = %port.key, error = %e, "cannot open an upstream UDP socket");
            port.reject("connect_failed");
            return None;
        }
    };
    if let Err(e) = upstream.connect(backend.addr).await {
        tracing::debug!(backend = %backend.addr, error = %e, "udp connect failed");
        port.reject("connect_failed");
        return None;
    }
    let upstream = Arc::new(upstream);
    let last = Arc::new(AtomicU64::new(now));
    backend.active.fetch_add(1, Ordering::Relaxed);
    port.metrics
        .connections
        .get_or_create(backend.labels())
        .inc();
    let replies = {
        let upstream = Arc::clone(&upstream);
        let vip_socket = Arc::clone(vip_socket);
        let last = Arc::clone(&last);
        let packets_out = port
            .metrics
            .udp_packets
            .get_or_create(&direction(port, "out"))
            .clone();
        tokio::spawn(async move {
            loop {
                if upstream.readable().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Allocated per reply so that idle flows hold no 64 KiB buffer.
                let mut buf = Vec::with_capacity(MAX_DATAGRAM);
                match upstream.try_recv_buf(&mut buf) {
                    Ok(_) => {
                        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                        if vip_socket.send_to(&buf, client).await.is_ok() {
                            packets_out.inc();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // ECONNREFUSED from an ICMP port unreachable: keep the flow; the idle timeout ends it.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
    };
    Some(Flow {
        upstream,
        backend,
        last,
        replies,
        generation,
    })
}
