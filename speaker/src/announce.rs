//! The seam between "which VIPs this host serves, and are they healthy" and
//! "how the network learns about them". Standalone mode on loopback needs
//! no announcement; ARP/NDP (layer 2) and BGP plug in here.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// Makes VIPs reachable (or withdraws them).
pub trait Announcer: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// The VIPs this host serves and whether each has a healthy backend
    /// (a VIP without one should be withdrawn). Called on every change.
    fn update(&mut self, vips: &BTreeMap<IpAddr, bool>);
}

/// Announces nothing: the VIPs are reachable already (loopback, or routed
/// to the host by other means).
pub struct NoAnnouncer;

impl Announcer for NoAnnouncer {
    fn name(&self) -> &'static str {
        "none"
    }

    fn update(&mut self, vips: &BTreeMap<IpAddr, bool>) {
        for (vip, healthy) in vips {
            tracing::debug!(%vip, healthy, "announcement: none (VIP reachable without announcing)");
        }
    }
}
