//! Minimal HTTP/1.1 and UDP clients for tests, with a chosen source
//! address (anything in 127.0.0.0/8 works on loopback), so that tests can
//! act as many distinct clients.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Connects to `addr`, from `source` if given.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// One GET with `Connection: close`; returns the body (the backend's name
/// and a newline for test backends). Errors if the status is not 200.
pub async fn get(addr: SocketAddr, path: &str, source: Option<IpAddr>) -> io::Result<String> {
    let mut s = connect(addr, source).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))??;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("no response head in {text:?}"),
        )
    })?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("status: {head}")));
    }
    Ok(body.to_string())
}

/// A keep-alive HTTP connection.
pub struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Opens the connection.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<KeepAlive> {
        Ok(KeepAlive {
            stream: connect(addr, source).await?,
            buf: Vec::new(),
        })
    }

    /// The local address (what a PROXY header should announce).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("connected")
    }

    /// One GET on this connection; returns the body.
    pub async fn get(&mut self, path: &str) -> io::Result<String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.stream.write_all(req.as_bytes()).await?;
        let mut chunk = [0u8; 4096];
        let fut = async {
            loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..i]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if self.buf.len() >= i + 4 + len {
                        let body =
                            String::from_utf8_lossy(&self.buf[i + 4..i + 4 + len]).to_string();
                        self.buf.drain(..i + 4 + len);
                        return Ok(body);
                    }
                }
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed",
                    ));
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "response timed out"))?
    }
}

/// Sends one datagram to `addr` and waits for one reply; returns the reply
/// and the address it came from.
pub async fn udp_roundtrip(
    addr: SocketAddr,
    payload: &[u8],
    source: Option<IpAddr>,
) -> io::Result<(Vec<u8>, SocketAddr)> {
    let bind_ip = source.unwrap_or(if addr.is_ipv4() {
        "127.0.0.1".parse().unwrap()
    } else {
        "::1".parse().unwrap()
    });
    let socket = UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
    socket.send_to(payload, addr).await?;
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no UDP reply"))??;
    buf.truncate(n);
    Ok((buf, from))
}
