//! The only crate in ferrolb allowed to use `unsafe`. Each block says why
//! it is sound. Everything here is a thin wrapper that turns a system call
//! into a safe, owned Rust value; the logic lives elsewhere.

pub mod bpf;

use socket2::{Domain, Protocol, SockAddr, SockFilter, Socket, Type};
use std::io;
use std::mem::size_of;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// EtherType of "every protocol", for the socket; the BPF filter narrows it.
const ETH_P_ALL: u16 = 0x0003;

/// Classic BPF program run by the kernel on every frame of the interface:
/// keep ARP, and IPv6 ICMPv6 (next header 58, no extension headers)
/// neighbour solicitations (135) and advertisements (136); drop the rest
/// before it is copied to us.
const ARP_NDP_FILTER: [(u16, u8, u8, u32); 10] = [
    (0x28, 0, 0, 12),     // ldh [12]            ethertype
    (0x15, 6, 0, 0x0806), // jeq ARP -> accept
    (0x15, 0, 6, 0x86dd), // jeq IPv6 ? next : drop
    (0x30, 0, 0, 20),     // ldb [20]            IPv6 next header
    (0x15, 0, 4, 58),     // jeq ICMPv6 ? next : drop
    (0x30, 0, 0, 54),     // ldb [54]            ICMPv6 type
    (0x15, 1, 0, 135),    // jeq NS -> accept
    (0x15, 0, 1, 136),    // jeq NA -> accept : drop
    (0x06, 0, 0, 0xffff), // accept
    (0x06, 0, 0, 0),      // drop
];

/// A raw Ethernet socket bound to one interface, filtered to ARP and NDP,
/// registered with tokio.
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
}

impl PacketSocket {
    /// Opens the socket on interface `ifindex` (needs CAP_NET_RAW).
    pub fn open(ifindex: u32) -> io::Result<PacketSocket> {
        let proto = Protocol::from(ETH_P_ALL.to_be() as i32);
        let socket = Socket::new(
            Domain::PACKET,
            Type::RAW.nonblocking().cloexec(),
            Some(proto),
        )?;
        let filter: Vec<SockFilter> = ARP_NDP_FILTER
            .iter()
            .map(|&(c, t, f, k)| SockFilter::new(c, t, f, k))
            .collect();
        socket.attach_filter(&filter)?;
        // SAFETY: `try_init` hands us zeroed storage of sockaddr_storage size,
        // which is larger than and suitably aligned for sockaddr_ll; we write
        // only that struct's fields and report its exact length.
        let ((), addr) = unsafe {
            SockAddr::try_init(|storage, len| {
                let ll = storage.cast::<libc::sockaddr_ll>();
                (*ll).sll_family = libc::AF_PACKET as u16;
                (*ll).sll_protocol = ETH_P_ALL.to_be();
                (*ll).sll_ifindex = ifindex as i32;
                *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                Ok(())
            })
        }?;
        socket.bind(&addr)?;
        // SAFETY: the socket is owned and moved into the AsyncFd, which keeps
        // the descriptor open until it is dropped and deregisters it first;
        // nothing else holds the descriptor.
        let fd = unsafe {
            AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(PacketSocket { fd })
    }

    /// Receives one frame into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| {
                let uninit = as_uninit(buf);
                s.get_ref().recv(uninit)
            }) {
                // The interface went down: reported once, then the socket,
                // still bound, receives again when the link returns. Not
                // an end (a responder that stopped here never answered
                // again after a link flap).
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENETDOWN) => continue,
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one frame out of the bound interface.
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        // A packet socket reports its interface's last going down once, on
        // the next send, even when the interface is up again: that error is
        // stale, so the frame is tried once more (a second ENETDOWN is real).
        let mut stale_down = true;
        loop {
            match self.fd.get_ref().send(frame) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.fd.writable().await?;
                    guard.clear_ready();
                }
                Err(e) if e.raw_os_error() == Some(libc::ENETDOWN) && stale_down => {
                    stale_down = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Views an initialised byte buffer as the `MaybeUninit` slice socket2's
/// `recv` takes.
fn as_uninit(buf: &mut [u8]) -> &mut [std::mem::MaybeUninit<u8>] {
    // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout, and the buffer
    // is already initialised, so the kernel writing bytes into it (and the
    // caller then reading `buf` as `u8`) never observes uninitialised memory.
    unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) }
}

/// The kernel's `struct tcp_md5sig` (linux/tcp.h), which neither libc nor
/// socket2 define: 216 bytes.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; 80],
}

/// Longest TCP-MD5 key the kernel accepts.
pub const TCP_MD5_MAX_KEY: usize = 80;

/// Sets (or, with an empty key, clears) the TCP-MD5 key (RFC 2385) used
/// with `peer` on `socket`: before `connect` for an outgoing session, on the
/// listening socket for incoming ones.
pub fn set_tcp_md5<S: std::os::fd::AsRawFd>(
    socket: &S,
    peer: std::net::IpAddr,
    key: &[u8],
) -> io::Result<()> {
    if key.len() > TCP_MD5_MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 keys are at most 80 bytes",
        ));
    }
    // SAFETY: sockaddr_storage and the rest of the struct are plain integers and
    // arrays, for which all-zero bytes are a valid value.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    match peer {
        std::net::IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe {
                std::ptr::write(
                    (&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
        }
        std::net::IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    (&mut sig.addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: the pointer and length describe `sig`, which lives for the call;
    // the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn md5sig_matches_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<super::TcpMd5Sig>(), 216);
    }

    #[test]
    fn md5_key_is_accepted_by_the_kernel() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        super::set_tcp_md5(&s, "127.0.0.1".parse().unwrap(), b"s3cret").unwrap();
        let s6 = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        super::set_tcp_md5(&s6, "::1".parse().unwrap(), b"s3cret").unwrap();
        assert!(super::set_tcp_md5(&s, "127.0.0.1".parse().unwrap(), &[0; 81]).is_err());
    }
}
