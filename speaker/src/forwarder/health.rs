//! Active health checks: one task per backend, probing on the port's
//! current settings and feeding the rise/fall machine.

use super::port::{Backend, PortRuntime};
use ferrolb_balance::health::Observation;
use ferrolb_config::CheckKind;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Probes `backend` until it is removed or its port is gone.
pub async fn run(port: Weak<PortRuntime>, backend: Arc<Backend>) {
    // Spread first probes over the interval so that many backends do not probe in lockstep.
    let jitter = (backend.addr.port() as u64 * 7919) % 97;
    tokio::time::sleep(Duration::from_millis(jitter)).await;
    loop {
        if backend.is_removed() {
            return;
        }
        let Some(p) = port.upgrade() else { return };
        let Some(hc) = p.config().health_check.clone() else {
            drop(p);
            // Checks may be turned on by a reload.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let started = Instant::now();
        let ok = matches!(
            tokio::time::timeout(hc.timeout, probe(&hc.kind, backend.addr)).await,
            Ok(true)
        );
        p.metrics
            .check_seconds
            .get_or_create(backend.labels())
            .observe(started.elapsed().as_secs_f64());
        if !backend.is_removed() {
            p.observe(
                &backend,
                if ok {
                    Observation::ProbeOk
                } else {
                    Observation::ProbeFailed
                },
            );
        }
        drop(p);
        tokio::time::sleep_until(started + hc.interval).await;
    }
}

/// One probe: a TCP connect, or an HTTP GET whose status is in range.
pub async fn probe(kind: &CheckKind, addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    match kind {
        CheckKind::Tcp => true,
        CheckKind::Http {
            path,
            min_status,
            max_status,
        } => {
            let host = match addr {
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                SocketAddr::V4(a) => a.to_string(),
            };
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferrolb-health-check\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            match read_status(&mut stream).await {
                Some(code) => (*min_status..=*max_status).contains(&code),
                None => false,
            }
        }
    }
}

/// Reads the status code of an HTTP/1.x response (`HTTP/1.1 200 OK`).
async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = [0u8; 64];
    let mut len = 0;
    // "HTTP/1.1 200" is 12 bytes; read until we have them (or the line ends).
    while len < 12 {
        let n = stream.read(&mut buf[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    parse_status(&buf[..len])
}

/// Parses the status code from the start of a response.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    if !text.starts_with("HTTP/1.") || text.as_bytes()[8] != b' ' {
        return None;
    }
    let code: u16 = text[9..12].parse().ok()?;
    (100..=599).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::parse_status;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 200"), Some(200));
        assert_eq!(parse_status(b"HTTP/2 200 OK"), None);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"HTTP/1.1 abc OK"), None);
        assert_eq!(parse_status(b"HTTP/1.1 999 OK"), None);
        assert_eq!(parse_status(b""), None);
    }
}
