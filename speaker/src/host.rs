//! Host settings the announcers depend on: in layer 2 mode the kernel must
//! never answer ARP for a VIP itself; in both modes a VIP must be local so
//! traffic that reaches the node is accepted (an AnyIP `local` route on `lo`).

use std::collections::BTreeSet;
use std::net::IpAddr;

/// Why the host is not ready to serve the VIPs.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A sysctl is below what layer 2 mode needs and could not be raised.
    #[error("net.ipv4.conf.{scope}.{name} is {effective} on this node (the kernel uses the larger of conf/all and conf/{scope}); layer 2 mode needs at least {wanted}, and writing {path} failed ({source}). In Kubernetes the DaemonSet's privileged init container `arp-sysctls` (`ferrolb-speaker prepare-node`) sets it before the speaker starts: check that it ran (kubectl -n ferrolb-system describe pod); on a plain host run the speaker as root or set it yourself. Without arp_ignore>=1 and arp_announce>=2 every node's kernel answers ARP for the VIPs and they fight")]
    Sysctl {
        /// The interface (`all` for every one).
        scope: String,
        /// `arp_ignore` or `arp_announce`.
        name: &'static str,
        /// The value in force.
        effective: u8,
        /// The least value that works.
        wanted: u8,
        /// The file that could not be written.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The local routes could not be added or removed.
    #[error("cannot change the local routes of {vips} (a local route on lo in table local, set through rtnetlink; needs root or CAP_NET_ADMIN): {detail}")]
    Route {
        /// The VIPs, as a list for the message.
        vips: String,
        /// What the kernel said.
        detail: String,
    },
}

/// The two ARP sysctls layer 2 mode needs and their least working values:
/// `arp_ignore=1` (answer only for addresses on the receiving interface, so
/// the VIPs on `lo` are never answered by the kernel) and `arp_announce=2`
/// (never use a VIP as the source of the kernel's own requests). Higher
/// values are stricter and work too.
pub const ARP_SYSCTLS: [(&str, u8); 2] = [("arp_ignore", 1), ("arp_announce", 2)];

/// The value the kernel applies to an interface: for both ARP sysctls it is
/// the larger of `conf/all` and `conf/<iface>` (Documentation/networking/ip-sysctl.rst).
pub fn effective(all: u8, iface: u8) -> u8 {
    all.max(iface)
}

/// What must be written so that every interface in `values` (interface,
/// its own value) gets at least `wanted`, given `conf/all`'s value: nothing
/// when the effective values suffice (a read-only `/proc/sys` then does not
/// matter), else `all` alone, which covers every interface, present and future.
pub fn missing(all: u8, values: &[(String, u8)], wanted: u8) -> Option<(String, u8)> {
    values
        .iter()
        .find(|(_, v)| effective(all, *v) < wanted)
        .map(|(scope, v)| (scope.clone(), effective(all, *v)))
}

fn read(path: &str) -> u8 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Makes sure the kernel applies `arp_ignore>=1` and `arp_announce>=2` on
/// `interfaces` (and on every interface when `interfaces` is empty, for
/// `prepare-node`): reads the values in force and writes `conf/all` only
/// when one is too low, so an unprivileged speaker after the init container
/// writes nothing.
pub fn prepare_arp(interfaces: &[String]) -> Result<(), HostError> {
    for (name, wanted) in ARP_SYSCTLS {
        let all_path = format!("/proc/sys/net/ipv4/conf/all/{name}");
        let all = read(&all_path);
        let values: Vec<(String, u8)> = if interfaces.is_empty() {
            vec![("all".to_string(), all)]
        } else {
            interfaces
                .iter()
                .map(|i| {
                    (
                        i.clone(),
                        read(&format!("/proc/sys/net/ipv4/conf/{i}/{name}")),
                    )
                })
                .collect()
        };
        if let Some((scope, effective)) = missing(all, &values, wanted) {
            std::fs::write(&all_path, wanted.to_string()).map_err(|source| HostError::Sysctl {
                scope,
                name,
                effective,
                wanted,
                path: all_path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Puts both ARP sysctls of `conf/all` back to the kernel's defaults (0),
/// for `cleanup-node` after an uninstall.
pub fn reset_arp() -> Result<(), HostError> {
    for (name, wanted) in ARP_SYSCTLS {
        let path = format!("/proc/sys/net/ipv4/conf/all/{name}");
        std::fs::write(&path, "0").map_err(|source| HostError::Sysctl {
            scope: "all".into(),
            name,
            effective: read(&path),
            wanted,
            path: path.clone(),
            source,
        })?;
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
