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
    /// The nodes that may announce it (Kubernetes: live speakers with ready
    /// endpoints as the policy requires); `None`: any node.
    pub nodes: Option<std::collections::BTreeSet<String>>,
}

impl ServiceVips {
    /// Whether `node` may announce this service.
    pub fn eligible(&self, node: &str) -> bool {
        self.nodes.as_ref().is_none_or(|n| n.contains(node))
    }
}

/// Makes VIPs reachable (or withdraws them).
pub trait Announcer: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// The services this host serves. Called on every change.
    fn update(&mut self, services: &[ServiceVips]);
    /// Stops announcing (BGP sends Cease so routers withdraw at once);
    /// returns tasks to wait for.
    fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}

/// Several announcers at once (layer 2 and BGP).
pub struct Many(pub Vec<Box<dyn Announcer>>);

impl Announcer for Many {
    fn name(&self) -> &'static str {
        match self.0.len() {
            0 => "none",
            1 => self.0[0].name(),
            _ => "l2+bgp",
        }
    }

    fn update(&mut self, services: &[ServiceVips]) {
        for a in &mut self.0 {
            a.update(services);
        }
    }

    fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        self.0.iter_mut().flat_map(|a| a.stop()).collect()
    }
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
