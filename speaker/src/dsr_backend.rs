//! `ferrolb-speaker prepare-backend`: the backend side of direct server
//! return on a plain host, in one command and without a tunnel device (the
//! kernel's ipip/ip6_tunnel modules need not exist).
//!
//! What it does, and `--undo` takes back:
//! - each VIP becomes a local route on `lo` (protocol 249, as the speaker's
//!   own), so the host's stack accepts packets for it and answers from it;
//! - `arp_ignore>=1` and `arp_announce>=2` on the interfaces, so the host
//!   never answers ARP for a VIP nor uses one as an ARP source (the load
//!   balancer owns the VIP on the wire);
//! - a tc program at the interfaces' ingress unwraps the load balancer's
//!   IPIP / IPv6-in-IPv6 packets for those VIPs (and drops ARP requests
//!   for them), and one at egress lowers the MSS of the VIPs' SYN-ACKs by
//!   the outer header, so clients' full-size segments still fit the MTU
//!   (crates/sys/bpf/decap.bpf.c).

use crate::netlink;
use ferrolb_sys::bpf::{self, DecapVip};
use std::net::IpAddr;

/// Why preparing (or undoing) failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No interface to attach to.
    #[error("no interface to prepare: name them with --interface (the ones the load balancers' packets arrive on)")]
    NoInterface,
    /// An interface named does not exist.
    #[error("interface {0:?} does not exist on this host")]
    NoSuchInterface(String),
    /// Listing interfaces failed.
    #[error("cannot list the interfaces (rtnetlink): {0}")]
    Links(std::io::Error),
    /// An `--from` value is not a prefix.
    #[error("--from {0:?} is not an address or CIDR (e.g. 10.0.0.0/24)")]
    BadSource(String),
    /// The local routes could not be changed.
    #[error("cannot change the local routes of the VIPs on lo (needs root or CAP_NET_ADMIN): {0}")]
    Routes(String),
    /// The ARP sysctls.
    #[error(transparent)]
    Arp(#[from] crate::host::HostError),
    /// The tc programs.
    #[error("{0}")]
    Program(#[from] bpf::BpfError),
}

/// The largest MSS a client may send to a VIP of this family through the
/// load balancer's tunnel on a link of `mtu`: the MTU less the inner IP and
/// TCP headers and the outer header the load balancer adds.
pub fn mss(mtu: u32, v6: bool) -> u16 {
    let overhead = if v6 { 40 + 20 + 40 } else { 20 + 20 + 20 };
    mtu.saturating_sub(overhead).clamp(536, u32::from(u16::MAX)) as u16
}

/// Parses `--from` values: `ADDR` or `ADDR/LEN`, host bits ignored.
pub fn sources(from: &[String]) -> Result<Vec<(IpAddr, u8)>, PrepareError> {
    from.iter()
        .map(|f| {
            let bad = || PrepareError::BadSource(f.clone());
            let (a, len) = match f.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (f.as_str(), None),
            };
            let ip: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
                None => max,
            };
            if len > max {
                return Err(bad());
            }
            Ok((ip, len))
        })
        .collect()
}

/// The interfaces to act on: those named (which must exist), else every
/// interface that is up except `lo`; with their MTUs.
fn interfaces(named: &[String]) -> Result<Vec<(String, u32)>, PrepareError> {
    let links = netlink::links().map_err(PrepareError::Links)?;
    let mtu = |name: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1500)
    };
    let out: Vec<(String, u32)> = if named.is_empty() {
        links
            .iter()
            .filter(|l| l.up && l.name != "lo")
            .map(|l| (l.name.clone(), mtu(&l.name)))
            .collect()
    } else {
        named
            .iter()
            .map(|n| {
                if links.iter().any(|l| &l.name == n) {
                    Ok((n.clone(), mtu(n)))
                } else {
                    Err(PrepareError::NoSuchInterface(n.clone()))
                }
            })
            .collect::<Result<_, _>>()?
    };
    if out.is_empty() {
        return Err(PrepareError::NoInterface);
    }
    Ok(out)
}

/// What was prepared, for the command's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Interfaces and the MTU each has.
    pub interfaces: Vec<(String, u32)>,
    /// VIPs and the MSS their SYN-ACKs advertise at most.
    pub vips: Vec<DecapVip>,
}

/// Prepares this host to serve `vips` behind a DSR load balancer.
/// Running it again replaces what the last run installed.
pub fn prepare(
    vips: &[IpAddr],
    named: &[String],
    from: &[String],
) -> Result<Prepared, PrepareError> {
    let sources = sources(from)?;
    let ifaces = interfaces(named)?;
    let min_mtu = ifaces.iter().map(|(_, m)| *m).min().unwrap_or(1500);
    let vips: Vec<DecapVip> = vips
        .iter()
        .map(|ip| DecapVip {
            addr: *ip,
            mss: mss(min_mtu, ip.is_ipv6()),
        })
        .collect();
    let names: Vec<String> = ifaces.iter().map(|(n, _)| n.clone()).collect();
    // Before the VIPs become local, so the host never answers ARP for them.
    crate::host::prepare_arp(&names)?;
    let addrs: Vec<IpAddr> = vips.iter().map(|v| v.addr).collect();
    let refused =
        netlink::add_local_routes(&addrs).map_err(|e| PrepareError::Routes(e.to_string()))?;
    if !refused.is_empty() {
        return Err(PrepareError::Routes(
            refused
                .iter()
                .map(|(ip, e)| format!("{ip}: {e}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    bpf::decap_install(&names, &vips, &sources)?;
    Ok(Prepared {
        interfaces: ifaces,
        vips,
    })
}

/// Takes the programs off the interfaces (named, else every interface) and
/// removes the VIPs' local routes (those given, else every ferrolb local
/// route). Returns the interfaces and VIPs it cleaned.
pub fn undo(vips: &[IpAddr], named: &[String]) -> Result<(Vec<String>, Vec<IpAddr>), PrepareError> {
    let names: Vec<String> = if named.is_empty() {
        netlink::links()
            .map_err(PrepareError::Links)?
            .into_iter()
            .filter(|l| l.name != "lo")
            .map(|l| l.name)
            .collect()
    } else {
        named.to_vec()
    };
    let removed = bpf::decap_remove(&names)?;
    let vips: Vec<IpAddr> = if vips.is_empty() {
        netlink::ferrolb_local_routes().map_err(|e| PrepareError::Routes(e.to_string()))?
    } else {
        vips.to_vec()
    };
    let refused =
        netlink::delete_local_routes(&vips).map_err(|e| PrepareError::Routes(e.to_string()))?;
    if let Some((ip, e)) = refused.first() {
        return Err(PrepareError::Routes(format!("{ip}: {e}")));
    }
    Ok((removed, vips))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mss_leaves_room_for_the_outer_header() {
        assert_eq!(mss(1500, false), 1440);
        assert_eq!(mss(1500, true), 1400);
        assert_eq!(mss(9000, false), 8940);
        // Never below the minimum every host must accept.
        assert_eq!(mss(576, true), 536);
        assert_eq!(mss(0, false), 536);
    }

    #[test]
    fn sources_parse_addresses_and_prefixes_and_refuse_the_rest() {
        let ok = sources(&["10.0.0.0/24".into(), "192.0.2.7".into(), "fd00::/8".into()]).unwrap();
        assert_eq!(
            ok,
            vec![
                ("10.0.0.0".parse().unwrap(), 24),
                ("192.0.2.7".parse().unwrap(), 32),
                ("fd00::".parse().unwrap(), 8)
            ]
        );
        for bad in ["10.0.0.0/33", "fd00::/129", "lb1", "10.0.0.0/x", ""] {
            let e = sources(&[bad.into()]).unwrap_err();
            assert!(
                e.to_string().contains("is not an address or CIDR"),
                "{bad}: {e}"
            );
        }
    }
}
