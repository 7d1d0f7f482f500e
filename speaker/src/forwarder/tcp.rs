//! The TCP proxy: accept on VIP:port, admit (source ranges, limit), pick a
//! backend with retries, send the PROXY header, then copy both ways with
//! half-close and an idle timeout.

use super::port::{Backend, PortRuntime};
use ferrolb_balance::health::Observation;
use ferrolb_balance::proxy_protocol;
use ferrolb_config::ProxyProtocol;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use tokio::time::Instant;

/// Per-direction buffer, allocated only while data flows, so idle
/// connections hold no buffers.
const BUF: usize = 32 * 1024;

/// How many backends a connection tries before giving up.
const MAX_TRIES: usize = 3;

/// Accepts until the port is stopped; each connection runs in its own task
/// tracked by `conns` so shutdown can wait for them.
pub async fn serve(port: Arc<PortRuntime>, listener: TcpListener, conns: Arc<super::ConnTracker>) {
    let mut stop = port.stop.subscribe();
    loop {
        tokio::select! {
            _ = super::until_set(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let port = Arc::clone(&port);
                    let token = conns.enter();
                    tokio::spawn(async move {
                        handle(port, stream, peer).await;
                        drop(token);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(port = %port.key, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::debug!(port = %port.key, "listener stopped");
}

/// Refuses a connection at once with a reset, so clients fail fast instead of hanging.
fn refuse(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn handle(port: Arc<PortRuntime>, client: TcpStream, peer: SocketAddr) {
    if !port.service.allows(peer.ip()) {
        port.reject("source_range");
        return refuse(client);
    }
    let _slot = match port.service.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(limit) => {
            port.reject(limit);
            return refuse(client);
        }
    };
    let cfg = port.config();
    let mut failed: Vec<SocketAddr> = Vec::new();
    let (backend, upstream) = loop {
        let Some(backend) = port.pick(peer.ip(), &failed) else {
            port.reject(if failed.is_empty() {
                "no_backend"
            } else {
                "connect_failed"
            });
            return refuse(client);
        };
        match tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(s)) => break (backend, s),
            Ok(Err(e)) => tracing::debug!(backend = %backend.addr, error = %e, "connect failed"),
            Err(_) => tracing::debug!(backend = %backend.addr, "connect timed out"),
        }
        port.observe(&backend, Observation::ConnectFailed);
        failed.push(backend.addr);
        if failed.len() >= MAX_TRIES {
            port.reject("connect_failed");
            return refuse(client);
        }
    };
    backend.active.fetch_add(1, Ordering::Relaxed);
    let active = &port.active_gauge;
    active.inc();
    port.metrics
        .connections
        .get_or_create(backend.labels())
        .inc();
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let local = client
        .local_addr()
        .unwrap_or(SocketAddr::new(port.key.vip, port.key.port));
    let result = relay(&port, &backend, client, upstream, peer, local, &cfg).await;
    if let Err(e) = result {
        tracing::debug!(port = %port.key, client = %peer, error = %e, "connection ended with an error");
    }
    active.dec();
    backend.active.fetch_sub(1, Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
async fn relay(
    port: &PortRuntime,
    backend: &Backend,
    client: TcpStream,
    mut upstream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    cfg: &super::port::PortConfig,
) -> io::Result<()> {
    let idle = cfg.idle_timeout;
    if let Some(v) = cfg.proxy_protocol {
        let header = match v {
            ProxyProtocol::V1 => proxy_protocol::v1(peer, local),
            ProxyProtocol::V2 => proxy_protocol::v2(peer, local),
        };
        upstream.write_all(&header).await?;
    }
    // Nanoseconds since `epoch` of the last byte either way.
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (bytes_in, bytes_out) = (&port.bytes_in, &port.bytes_out);
    let mut kill = backend.kill_signal();
    if cfg.splice {
        return tokio::select! {
            r = super::splice::relay(&client, &upstream, epoch, &last, bytes_in, bytes_out) => r,
            _ = idle_watch(epoch, &last, idle) => Ok(()),
            _ = super::until_set(&mut kill) => Ok(()),
        };
    }
    let (cr, cw) = client.into_split();
    let (br, bw) = upstream.into_split();
    let up = copy_half(cr, bw, epoch, &last, bytes_in);
    let down = copy_half(br, cw, epoch, &last, bytes_out);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r.map(|_| ()),
        _ = idle_watch(epoch, &last, idle) => Ok(()),
        _ = super::until_set(&mut kill) => Ok(()),
    }
}

async fn idle_watch(epoch: Instant, last: &AtomicU64, idle: Duration) {
    loop {
        let deadline = epoch + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Copies one direction until EOF, then half-closes the other side.
///
/// The buffer exists only while data flows: it is taken (uninitialised, so
/// no page is touched until data lands in it) when the socket is readable and
/// given back as soon as the socket runs dry, so an idle connection holds no
/// buffer, and a burst keeps one buffer until it ends.
async fn copy_half(
    r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    epoch: Instant,
    last: &AtomicU64,
    bytes: &prometheus_client::metrics::counter::Counter,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() == 0 {
            r.readable().await?;
            buf = Vec::with_capacity(BUF);
        }
        buf.clear();
        match r.try_read_buf(&mut buf) {
            Ok(0) => {
                w.shutdown().await?;
                return Ok(());
            }
            Ok(n) => {
                w.write_all(&buf).await?;
                bytes.inc_by(n as u64);
                last.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(e),
        }
    }
}
