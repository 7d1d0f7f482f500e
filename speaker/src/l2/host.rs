//! Host settings layer 2 mode depends on: the kernel must never answer ARP
//! for a VIP itself, and an owned VIP must be local so traffic to it is
//! accepted (an AnyIP `local` route on `lo`).

use std::net::IpAddr;
use std::process::Command;

/// Why the host is not ready for layer 2 mode.
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
    /// The local route could not be added.
    #[error("cannot make {vip} local (`ip route replace local {vip} dev lo`): {detail}")]
    Route {
        /// The VIP.
        vip: IpAddr,
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

/// Makes `vip` local on this host with an AnyIP route, so the kernel
/// accepts traffic for it. Every node may hold the route: with
/// `arp_ignore=1` the kernel never answers for it, so only the owner
/// (whose speaker answers) receives the traffic.
pub fn make_local(vip: IpAddr) -> Result<(), HostError> {
    let (family, prefix) = match vip {
        IpAddr::V4(_) => ("-4", 32),
        IpAddr::V6(_) => ("-6", 128),
    };
    let out = Command::new("ip")
        .args([
            family,
            "route",
            "replace",
            "local",
            &format!("{vip}/{prefix}"),
            "dev",
            "lo",
            "table",
            "local",
        ])
        .output()
        .map_err(|e| HostError::Route {
            vip,
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HostError::Route {
            vip,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
