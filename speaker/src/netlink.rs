//! Local routes through rtnetlink, the kernel's own interface, instead of
//! running `ip`: the speaker image then needs no iproute2, and 10,000 VIPs
//! cost a few `send` calls. The codec is pure and lives in `ferrolb-netlink`
//! (`encode_route`, `encode_dump`, `parse_acks`, `parse_routes`);
//! `add_local_routes`, `delete_local_routes` and `ferrolb_local_routes` here
//! are the thin I/O around it, through nix's safe socket wrappers.

pub use ferrolb_netlink::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn route_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// Makes `vips` local on `lo`; returns the ones the kernel refused, with why.
/// An error means the netlink socket itself failed (no CAP_NET_ADMIN, say).
pub fn add_local_routes(vips: &[IpAddr]) -> std::io::Result<Vec<(IpAddr, std::io::Error)>> {
    change_local_routes(vips, Op::Replace)
}

/// Removes ferrolb's local routes to `vips`; a route already gone is not an error.
pub fn delete_local_routes(vips: &[IpAddr]) -> std::io::Result<Vec<(IpAddr, std::io::Error)>> {
    let refused = change_local_routes(vips, Op::Delete)?;
    // ESRCH: no such route, which is what was wanted.
    Ok(refused
        .into_iter()
        .filter(|(_, e)| e.raw_os_error() != Some(3))
        .collect())
}

fn change_local_routes(vips: &[IpAddr], op: Op) -> std::io::Result<Vec<(IpAddr, std::io::Error)>> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let lo = nix::net::if_::if_nametoindex("lo")?;
    let fd = route_socket()?;
    let mut refused = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Batches small enough for the socket buffers; each is acknowledged before the next.
    for (batch_no, batch) in vips.chunks(512).enumerate() {
        let mut pending: BTreeMap<u32, IpAddr> = BTreeMap::new();
        let mut msg = Vec::with_capacity(batch.len() * 48);
        for (i, vip) in batch.iter().enumerate() {
            let seq = (batch_no * 512 + i + 1) as u32;
            pending.insert(seq, *vip);
            msg.extend_from_slice(&encode_route(seq, *vip, lo, op));
        }
        let sent = send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
        if sent != msg.len() {
            return Err(std::io::Error::other("netlink send was truncated"));
        }
        while !pending.is_empty() {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            for (seq, errno) in parse_acks(&buf[..n]) {
                if let Some(vip) = pending.remove(&seq) {
                    if errno != 0 {
                        refused.push((vip, std::io::Error::from_raw_os_error(errno)));
                    }
                }
            }
        }
    }
    Ok(refused)
}

/// The VIPs of every local route ferrolb made ([`RTPROT_FERROLB`] in table local).
pub fn ferrolb_local_routes() -> std::io::Result<Vec<IpAddr>> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = route_socket()?;
    send(fd.as_raw_fd(), &encode_dump(1), MsgFlags::empty())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::new();
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            break;
        }
        let (routes, done) = parse_routes(&buf[..n]);
        out.extend(
            routes
                .into_iter()
                .filter(Route::is_ferrolb_local)
                .map(|r| r.dst),
        );
        if done {
            break;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
