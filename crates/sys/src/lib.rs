//! The only crate in ferrolb allowed to use `unsafe`. Each block says why
//! it is sound. Everything here is a thin wrapper that turns a system call
//! into a safe, owned Rust value; the logic lives elsewhere.

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
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one frame out of the bound interface.
    pub async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.fd.get_ref().send(frame) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.fd.writable().await?;
                    guard.clear_ready();
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
