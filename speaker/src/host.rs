//! Host settings the announcers depend on: in layer 2 mode the kernel must
//! never answer ARP for a VIP itself; in both modes a VIP must be local so
//! traffic that reaches the node is accepted (an AnyIP `local` route on `lo`).

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Why the host is not ready to serve the VIPs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A sysctl could not be set.
    #[error("cannot set {path} to {value} ({source}); run the speaker as root (or with CAP_NET_ADMIN), or set it yourself: without arp_ignore=1 and arp_announce=2 every node's kernel answers ARP for the VIPs and they fight")]
    Sysctl {
        /// The /proc path.
        path: String,
        /// The wanted value.
        value: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The local routes could not be added.
    #[error("cannot make {vips} local (a local route on lo in table local, set through rtnetlink; needs root or CAP_NET_ADMIN): {detail}")]
    Route {
        /// The VIPs, as a list for the message.
        vips: String,
        /// What `ip` said.
        detail: String,
    },
}

fn set(path: String, value: &'static str) -> Result<(), HostError> {
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|source| HostError::Sysctl {
        path,
        value,
        source,
    })
}

/// Sets `arp_ignore=1` (answer only for addresses on the receiving
/// interface) and `arp_announce=2` (never use a VIP as ARP source) for all
/// interfaces and each announcing one.
pub fn prepare_arp(interfaces: &[String]) -> Result<(), HostError> {
    for scope in std::iter::once("all".to_string()).chain(interfaces.iter().cloned()) {
        set(format!("/proc/sys/net/ipv4/conf/{scope}/arp_ignore"), "1")?;
        set(format!("/proc/sys/net/ipv4/conf/{scope}/arp_announce"), "2")?;
    }
    Ok(())
}

/// The VIPs made local on this host so far: each `ensure` adds only new
/// ones, in batches of rtnetlink requests, so 10,000 VIPs cost a few system
/// calls.
///
/// Routes are not removed when a VIP goes away: a stale local route only makes
/// the node accept traffic nobody sends it (no one resolves or routes the VIP
/// here any more), while removing a route still in use would drop traffic.
#[derive(Debug, Default)]
pub struct LocalRoutes {
    done: BTreeSet<IpAddr>,
}

impl LocalRoutes {
    /// Makes every VIP in `vips` local (AnyIP route on `lo` in table local).
    /// Every node may hold these routes: in layer 2 mode `arp_ignore=1` keeps
    /// the kernel from answering for them, in BGP mode only routers send here.
    pub fn ensure(&mut self, vips: impl IntoIterator<Item = IpAddr>) -> Result<(), HostError> {
        let new: Vec<IpAddr> = vips
            .into_iter()
            .filter(|v| !self.done.contains(v))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let failed = |detail: String| HostError::Route {
            vips: list(&new),
            detail,
        };
        let refused = crate::netlink::add_local_routes(&new).map_err(|e| failed(e.to_string()))?;
        if !refused.is_empty() {
            let bad: Vec<IpAddr> = refused.iter().map(|(v, _)| *v).collect();
            return Err(HostError::Route {
                vips: list(&bad),
                detail: refused[0].1.to_string(),
            });
        }
        self.done.extend(new);
        Ok(())
    }
}

fn list(vips: &[IpAddr]) -> String {
    let shown: Vec<String> = vips.iter().take(3).map(ToString::to_string).collect();
    match vips.len() {
        n if n > 3 => format!("{} and {} more", shown.join(", "), n - 3),
        _ => shown.join(", "),
    }
}
