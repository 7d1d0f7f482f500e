//! Zero-copy relay with `splice(2)` through a pipe per direction: bytes go
//! socket -> pipe -> socket inside the kernel, never through user space.
//! Selected with `forwarder.splice: true`; the plain copy is the default
//! (on loopback the copy is as fast or faster; splice pays off on real NICs).

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use nix::unistd::pipe2;
use prometheus_client::metrics::counter::Counter;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes moved per splice call (the default pipe capacity).
const CHUNK: usize = 64 * 1024;

/// Relays both directions until both have ended (half-close respected).
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    epoch: Instant,
    last: &AtomicU64,
    bytes_in: &Counter,
    bytes_out: &Counter,
) -> io::Result<()> {
    tokio::try_join!(
        half(client, upstream, epoch, last, bytes_in),
        half(upstream, client, epoch, last, bytes_out)
    )
    .map(|_| ())
}

async fn half(
    src: &TcpStream,
    dst: &TcpStream,
    epoch: Instant,
    last: &AtomicU64,
    bytes: &Counter,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    // The pipe is made on first data, so idle connections hold no pipe (two fds each).
    let mut pipe = None;
    loop {
        src.readable().await?;
        let (pr, pw) = match &pipe {
            Some(p) => p,
            None => pipe.insert(pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?),
        };
        // The pipe is always empty here, so EAGAIN can only mean "no data on the socket".
        let n = match src.try_io(Interest::READABLE, || {
            splice(src, None, &*pw, None, CHUNK, flags).map_err(io::Error::from)
        }) {
            Ok(0) => {
                socket2::SockRef::from(dst).shutdown(Shutdown::Write)?;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&*pr, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.inc_by(n as u64);
        last.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
