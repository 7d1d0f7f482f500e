//! The seam between "which VIPs this host serves, and are they healthy" and
//! "how the network learns about them". Standalone mode on loopback needs
//! no announcement; ARP/NDP (layer 2) and BGP plug in here.

use std::net::IpAddr;

/// A service's VIPs as the announcement layer sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceVips {
    /// The service (the election key: both addresses of a dual-stack service move together).
    pub key: String,
    /// The pool its addresses come from (selects the advertisements).
    pub pool: String,
    /// Its addresses.
    pub vips: Vec<IpAddr>,
    /// Whether some backend takes connections (or the service forwards nothing).
    pub healthy: bool,
}

/// Makes VIPs reachable (or withdraws them).
pub trait Announcer: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// The services this host serves. Called on every change.
    fn update(&mut self, services: &[ServiceVips]);
}

/// Announces nothing: the VIPs are reachable already (loopback, or routed
/// to the host by other means).
pub struct NoAnnouncer;

impl Announcer for NoAnnouncer {
    fn name(&self) -> &'static str {
        "none"
    }

    fn update(&mut self, services: &[ServiceVips]) {
        for s in services {
            tracing::debug!(service = %s.key, vips = ?s.vips, healthy = s.healthy, "announcement: none (VIP reachable without announcing)");
        }
    }
}
