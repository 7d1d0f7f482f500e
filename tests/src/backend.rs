//! Test backends that record what reaches them: an HTTP/1.1 server
//! (keep-alive, optional PROXY header parsing), a UDP echo server and a raw
//! TCP echo server. Each can be stopped, which closes its listener and every
//! open connection, as a crashed process would.

use ppp::PartialResult;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// Whether a backend expects a PROXY protocol header first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// No header.
    None,
    /// A v1 or v2 header, parsed with the `ppp` crate.
    Expect,
}

/// What a backend saw.
#[derive(Default, Debug)]
pub struct Seen {
    /// HTTP requests answered (or UDP datagrams echoed).
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Source addresses announced by PROXY headers, in order.
    pub proxied_clients: Mutex<Vec<SocketAddr>>,
    /// PROXY headers that did not parse.
    pub bad_headers: AtomicU64,
}

/// A running test backend.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, returned in every response.
    pub name: String,
    /// What it saw.
    pub seen: Arc<Seen>,
    stop: watch::Sender<bool>,
}

impl Backend {
    /// Stops it: the listener and every connection close at once.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// HTTP requests answered so far.
    pub fn requests(&self) -> u64 {
        self.seen.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Starts an HTTP/1.1 backend on `addr` (port 0 for any). Every request
/// gets `200` with body `NAME\n`; `/slow` waits 300 ms first.
pub async fn http(name: &str, addr: SocketAddr, proxy: Proxy) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let (stop, rx) = watch::channel(false);
    let name_s = name.to_string();
    {
        let seen = Arc::clone(&seen);
        let mut rx = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped(&mut rx) => return,
                    accepted = listener.accept() => {
                        let Ok((stream, peer)) = accepted else { continue };
                        seen.connections.fetch_add(1, Ordering::Relaxed);
                        let seen = Arc::clone(&seen);
                        let name = name_s.clone();
                        let mut rx = rx.clone();
                        tokio::spawn(async move {
                            seen.open.fetch_add(1, Ordering::Relaxed);
                            tokio::select! {
                                _ = stopped(&mut rx) => {}
                                _ = serve_http(stream, peer, &name, proxy, &seen) => {}
                            }
                            seen.open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                }
            }
        });
    }
    Ok(Backend {
        addr,
        name: name.to_string(),
        seen,
        stop,
    })
}

async fn read_proxy_header(stream: &mut TcpStream, buf: &mut Vec<u8>, seen: &Seen) -> Option<()> {
    let mut chunk = [0u8; 512];
    loop {
        match ppp::HeaderResult::parse(buf) {
            ppp::HeaderResult::V1(Ok(h)) => {
                let consumed = h.header.len();
                if let ppp::v1::Addresses::Tcp4(a) = h.addresses {
                    seen.proxied_clients
                        .lock()
                        .unwrap()
                        .push(SocketAddr::new(a.source_address.into(), a.source_port));
                } else if let ppp::v1::Addresses::Tcp6(a) = h.addresses {
                    seen.proxied_clients
                        .lock()
                        .unwrap()
                        .push(SocketAddr::new(a.source_address.into(), a.source_port));
                }
                buf.drain(..consumed);
                return Some(());
            }
            ppp::HeaderResult::V2(Ok(h)) => {
                let consumed = h.len();
                match h.addresses {
                    ppp::v2::Addresses::IPv4(a) => seen
                        .proxied_clients
                        .lock()
                        .unwrap()
                        .push(SocketAddr::new(a.source_address.into(), a.source_port)),
                    ppp::v2::Addresses::IPv6(a) => seen
                        .proxied_clients
                        .lock()
                        .unwrap()
                        .push(SocketAddr::new(a.source_address.into(), a.source_port)),
                    _ => {}
                }
                buf.drain(..consumed);
                return Some(());
            }
            r if r.is_incomplete() && buf.len() < 536 => {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            _ => {
                seen.bad_headers.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
}

/// Answers requests with the backend's name; `/peer` adds the client's
/// address as this host sees it (direct server return keeps it), and
/// `/upload` (with a Content-Length body) the number of body bytes read.
async fn serve_http(
    mut stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    proxy: Proxy,
    seen: &Seen,
) -> Option<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    if proxy == Proxy::Expect {
        read_proxy_header(&mut stream, &mut buf, seen).await?;
    }
    let mut chunk = [0u8; 4096];
    loop {
        // One request head at a time; bodies are not used by the tests.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return None;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let lower = head.to_ascii_lowercase();
        let close = lower.contains("connection: close");
        let body = match path.as_str() {
            "/peer" => format!("{name} {}\n", peer.ip().to_canonical()),
            "/upload" => {
                let want: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < want {
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.drain(..want);
                format!("{name} {want}\n")
            }
            _ => format!("{name}\n"),
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        stream.write_all(response.as_bytes()).await.ok()?;
        seen.requests.fetch_add(1, Ordering::Relaxed);
        if close {
            let _ = stream.shutdown().await;
            return Some(());
        }
    }
}

/// Starts a UDP backend that answers each datagram with `NAME:` and the payload.
pub async fn udp_echo(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
    let socket = UdpSocket::bind(addr).await?;
    let addr = socket.local_addr()?;
    let seen = Arc::new(Seen::default());
    let (stop, mut rx) = watch::channel(false);
    let prefix = format!("{name}:").into_bytes();
    {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                tokio::select! {
                    _ = stopped(&mut rx) => return,
                    r = socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { continue };
                        let mut reply = prefix.clone();
                        reply.extend_from_slice(&buf[..n]);
                        let _ = socket.send_to(&reply, from).await;
                        seen.requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    Ok(Backend {
        addr,
        name: name.to_string(),
        seen,
        stop,
    })
}

/// Starts a TCP backend on `addr` that runs `serve` on each accepted
/// connection until the backend is stopped.
async fn tcp_backend<F, Fut>(name: &str, addr: SocketAddr, serve: F) -> std::io::Result<Backend>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let (stop, rx) = watch::channel(false);
    {
        let seen = Arc::clone(&seen);
        let mut rx2 = rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped(&mut rx2) => return,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        seen.connections.fetch_add(1, Ordering::Relaxed);
                        let mut rx = rx.clone();
                        let work = serve(stream);
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stopped(&mut rx) => {}
                                _ = work => {}
                            }
                        });
                    }
                }
            }
        });
    }
    Ok(Backend {
        addr,
        name: name.to_string(),
        seen,
        stop,
    })
}

/// Starts a raw TCP echo backend (everything read is written back; EOF is
/// answered with EOF), for half-close and bulk tests.
pub async fn tcp_echo(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
    tcp_backend(name, addr, |mut stream| async move {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Starts a TCP backend that reads until the client half-closes, then sends
/// everything back and closes: the reply exists only if the proxy forwards
/// the client's FIN and keeps the other direction open.
pub async fn reply_after_eof(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
    tcp_backend(name, addr, |mut stream| async move {
        let mut all = Vec::new();
        if stream.read_to_end(&mut all).await.is_ok() {
            let _ = stream.write_all(&all).await;
            let _ = stream.shutdown().await;
        }
    })
    .await
}
