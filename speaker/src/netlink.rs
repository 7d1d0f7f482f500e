//! Local routes through rtnetlink, the kernel's own interface, instead of
//! running `ip`: the speaker image then needs no iproute2, and 10,000 VIPs
//! cost a few `send` calls. The codec is pure (`encode_local_route`,
//! `parse_acks`); `add_local_routes` is the thin I/O around it, through
//! nix's safe socket wrappers.

use std::collections::BTreeMap;
use std::net::IpAddr;

const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One `RTM_NEWROUTE` request equal to `ip route replace local VIP dev IFINDEX
/// table local`: a host-scope local route, created or replaced, acknowledged.
pub fn encode_local_route(seq: u32, vip: IpAddr, ifindex: u32) -> Vec<u8> {
    let (family, len, addr): (u8, u8, Vec<u8>) = match vip {
        IpAddr::V4(a) => (AF_INET, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, 128, a.octets().to_vec()),
    };
    let mut m = vec![0u8; 16];
    // struct rtmsg
    m.extend_from_slice(&[
        family,
        len,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_BOOT,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ]);
    m.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut m, RTA_DST, &addr);
    attr(&mut m, RTA_OIF, &ifindex.to_ne_bytes());
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    m[6..8]
        .copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// The acknowledgements in a datagram from the kernel: sequence number ->
/// errno (0 for success). Anything else, or a truncated message, is skipped.
pub fn parse_acks(mut buf: &[u8]) -> BTreeMap<u32, i32> {
    let mut out = BTreeMap::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR && len >= 20 {
            let err = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            out.insert(seq, -err);
        }
        let step = (len + 3) & !3;
        buf = &buf[step.min(buf.len())..];
    }
    out
}

/// Makes `vips` local on `lo`; returns the ones the kernel refused, with why.
/// An error means the netlink socket itself failed (no CAP_NET_ADMIN, say).
pub fn add_local_routes(vips: &[IpAddr]) -> std::io::Result<Vec<(IpAddr, std::io::Error)>> {
    use nix::sys::socket::{
        bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    use std::os::fd::AsRawFd;
    let lo = nix::net::if_::if_nametoindex("lo")?;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let mut refused = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Batches small enough for the socket buffers; each is acknowledged before the next.
    for (batch_no, batch) in vips.chunks(512).enumerate() {
        let mut pending: BTreeMap<u32, IpAddr> = BTreeMap::new();
        let mut msg = Vec::with_capacity(batch.len() * 48);
        for (i, vip) in batch.iter().enumerate() {
            let seq = (batch_no * 512 + i + 1) as u32;
            pending.insert(seq, *vip);
            msg.extend_from_slice(&encode_local_route(seq, *vip, lo));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_local_route_requests() {
        let m = encode_local_route(7, "192.0.2.100".parse().unwrap(), 1);
        let mut want = Vec::new();
        want.extend_from_slice(&44u32.to_ne_bytes());
        want.extend_from_slice(&24u16.to_ne_bytes());
        want.extend_from_slice(&0x505u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[2, 32, 0, 0, 255, 3, 254, 2, 0, 0, 0, 0]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&1u16.to_ne_bytes());
        want.extend_from_slice(&[192, 0, 2, 100]);
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(m, want);
        let m6 = encode_local_route(8, "2001:db8::1".parse().unwrap(), 1);
        assert_eq!(m6.len(), 16 + 12 + 20 + 8);
        assert_eq!(&m6[16..18], &[10, 128]);
    }

    #[test]
    fn acks_and_errors_are_read_and_garbage_is_skipped() {
        let ack = |seq: u32, err: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes());
            m.extend_from_slice(&0u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&err.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        let mut buf = ack(1, 0);
        buf.extend(ack(2, -1));
        let acks = parse_acks(&buf);
        assert_eq!(acks.get(&1), Some(&0));
        assert_eq!(acks.get(&2), Some(&1), "EPERM");
        assert!(parse_acks(&buf[..20]).is_empty() || parse_acks(&buf[..20]).len() <= 1);
        assert!(parse_acks(&[0xff; 7]).is_empty());
        let mut bad = ack(3, 0);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(
            parse_acks(&bad).is_empty(),
            "a length past the buffer stops parsing"
        );
    }
}
