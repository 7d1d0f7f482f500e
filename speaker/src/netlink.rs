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

/// Sends dump request `msg` and collects what `parse` reads from every
/// answer datagram until the dump ends.
fn dump<T>(msg: &[u8], parse: fn(&[u8]) -> (Vec<T>, bool)) -> std::io::Result<Vec<T>> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = route_socket()?;
    send(fd.as_raw_fd(), msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut out = Vec::new();
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            break;
        }
        let (items, done) = parse(&buf[..n]);
        out.extend(items);
        if done {
            break;
        }
    }
    Ok(out)
}

/// The VIPs of every local route ferrolb made ([`RTPROT_FERROLB`] in table local).
pub fn ferrolb_local_routes() -> std::io::Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = dump(&encode_dump(1), parse_routes)?
        .into_iter()
        .filter(Route::is_ferrolb_local)
        .map(|r| r.dst)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Sends one request and waits for its acknowledgement; a refusal is the
/// kernel's errno as an error.
fn request(fd: &std::os::fd::OwnedFd, seq: u32, msg: &[u8]) -> std::io::Result<()> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    send(fd.as_raw_fd(), msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Err(std::io::Error::other("netlink socket closed"));
        }
        if let Some(&errno) = parse_acks(&buf[..n]).get(&seq) {
            return if errno == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(errno))
            };
        }
    }
}

/// The link named `name`, if there is one.
pub fn link_by_name(name: &str) -> std::io::Result<Option<link::Link>> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = route_socket()?;
    send(
        fd.as_raw_fd(),
        &link::encode_get_link(1, name),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    let (links, _) = link::parse_links(&buf[..n]);
    if let Some(l) = links.into_iter().find(|l| l.name == name) {
        return Ok(Some(l));
    }
    match parse_acks(&buf[..n]).get(&1) {
        // ENODEV: no such link.
        Some(19) | None => Ok(None),
        Some(&errno) => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Every link on this host.
pub fn links() -> std::io::Result<Vec<link::Link>> {
    dump(&link::encode_link_dump(1), link::parse_links)
}

/// Creates macvlan `name` on `parent` with `mac` and `alias`, gives it its
/// host settings ([`link::encode_link_settings`]) while down, brings it up,
/// and returns its index. A link of that name already there is adopted if
/// it is exactly this one (a run that stopped before removing it), refused
/// otherwise.
pub fn create_macvlan(name: &str, parent: u32, mac: [u8; 6], alias: &str) -> std::io::Result<u32> {
    let fd = route_socket()?;
    match request(&fd, 1, &link::encode_new_macvlan(1, name, parent, mac)) {
        Ok(()) => {}
        // EEXIST
        Err(e) if e.raw_os_error() == Some(17) => {
            let theirs = link_by_name(name)?;
            let ours = theirs.as_ref().is_some_and(|l| {
                l.kind.as_deref() == Some("macvlan")
                    && l.parent == Some(parent)
                    && l.mac == Some(mac)
                    && l.alias.as_deref() == Some(alias)
            });
            if !ours {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "a link named {name} exists and is not this virtual MAC's ({theirs:?})"
                    ),
                ));
            }
        }
        Err(e) => return Err(e),
    }
    let index = link_by_name(name)?
        .map(|l| l.index)
        .ok_or_else(|| std::io::Error::other(format!("link {name} vanished after creation")))?;
    let configured = request(&fd, 2, &link::encode_link_settings(2, index, alias))
        .and_then(|()| request(&fd, 3, &link::encode_link_up(3, index)));
    if let Err(e) = configured {
        // Half made is not kept: without its settings the kernel could speak from the virtual MAC.
        let _ = request(&fd, 4, &link::encode_del_link(4, index));
        return Err(e);
    }
    Ok(index)
}

/// Deletes link `index`; one already gone is not an error.
pub fn delete_link(index: u32) -> std::io::Result<()> {
    let fd = route_socket()?;
    match request(&fd, 1, &link::encode_del_link(1, index)) {
        // ENODEV
        Err(e) if e.raw_os_error() == Some(19) => Ok(()),
        r => r,
    }
}

/// The way to `dst` (interface, source address), as `ip route get DST`
/// says; the kernel data path sends a backend's packets that way.
pub fn route_to(dst: IpAddr) -> std::io::Result<Way> {
    use nix::sys::socket::{recv, send, MsgFlags};
    use std::os::fd::AsRawFd;
    let fd = route_socket()?;
    let msg = encode_route_get(1, dst);
    send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse_route_get(&buf[..n], 1).map_err(|e| match e {
        LookupError::Refused(errno) => std::io::Error::from_raw_os_error(errno),
        LookupError::NoAnswer => std::io::Error::other(e.to_string()),
    })
}
