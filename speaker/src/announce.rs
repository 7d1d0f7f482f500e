//! The seam between "which VIPs this host serves, and are they healthy" and
//! "how the network learns about them". Standalone mode on loopback needs
//! no announcement; ARP/NDP (layer 2) and BGP plug in here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

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
    /// Its labels (the Kubernetes Service's, a standalone service's
    /// `labels`): what advertisements' `serviceSelector` match.
    pub labels: Arc<Labels>,
}

/// Labels of a service, shared between its entries.
pub type Labels = BTreeMap<String, String>;

impl ServiceVips {
    /// Whether `node` may announce this service.
    pub fn eligible(&self, node: &str) -> bool {
        self.nodes.as_ref().is_none_or(|n| n.contains(node))
    }
}

/// One change to the services a host serves. Announcers receive changes,
/// never the whole list again: with 10,000 Services, one EndpointSlice
/// change costs one entry's work, not the cluster's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The service is new, or its entry changed (the whole new entry).
    Put(Arc<ServiceVips>),
    /// The service is gone (by key).
    Remove(String),
}

impl Change {
    /// The service this change is about.
    pub fn key(&self) -> &str {
        match self {
            Change::Put(s) => &s.key,
            Change::Remove(k) => k,
        }
    }
}

/// One service's entry before and after a batch of changes.
pub type Touched = (Option<Arc<ServiceVips>>, Option<Arc<ServiceVips>>);

/// Whether a batch changed any service's addresses (new, gone or moved),
/// as opposed to only its health or candidates: what local routes and the
/// route janitor care about.
pub fn addresses_moved(touched: &BTreeMap<String, Touched>) -> bool {
    touched
        .values()
        .any(|(before, after)| before.as_ref().map(|s| &s.vips) != after.as_ref().map(|s| &s.vips))
}

/// The addresses of a service as a comma-separated list (logs, Events,
/// NodeAnnouncements).
pub fn vip_list(s: &ServiceVips) -> String {
    s.vips
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The services as one holder (an announcer, a BGP peer task) keeps them,
/// current through [`Change`]s; entries are shared, never copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    map: BTreeMap<String, Arc<ServiceVips>>,
}

impl Table {
    /// Applies `changes`; returns, per service whose entry really changed,
    /// its entry before and after (in key order). Apply everything queued
    /// as one batch: the "before" of two merged results is not the first one.
    pub fn apply(&mut self, changes: &[Change]) -> BTreeMap<String, Touched> {
        let mut touched: BTreeMap<String, Touched> = BTreeMap::new();
        for c in changes {
            let key = c.key();
            let old = match c {
                Change::Put(s) => self.map.insert(key.to_string(), Arc::clone(s)),
                Change::Remove(_) => self.map.remove(key),
            };
            touched
                .entry(key.to_string())
                .or_insert_with(|| (old, None))
                .1 = self.map.get(key).cloned();
        }
        touched.retain(|_, (before, after)| before != after);
        touched
    }

    /// The changes that make this table hold exactly `want` (for holders of
    /// whole lists: standalone mode's plan).
    pub fn diff(&self, want: &[ServiceVips]) -> Vec<Change> {
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<&str> = want.iter().map(|s| s.key.as_str()).collect();
        for k in self.map.keys().filter(|k| !keys.contains(k.as_str())) {
            out.push(Change::Remove(k.clone()));
        }
        for s in want {
            if self.map.get(&s.key).is_none_or(|old| **old != *s) {
                out.push(Change::Put(Arc::new(s.clone())));
            }
        }
        out
    }

    /// One service's entry.
    pub fn get(&self, key: &str) -> Option<&Arc<ServiceVips>> {
        self.map.get(key)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ServiceVips>> {
        self.map.values()
    }

    /// How many services.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no service is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Makes VIPs reachable (or withdraws them).
pub trait Announcer: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// What changed in the services this host serves (the first call holds
    /// every service). Called on every change.
    fn update(&mut self, changes: &[Change]);
    /// Stops announcing (BGP sends Cease so routers withdraw at once);
    /// returns tasks to wait for.
    fn stop(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(key: &str, ip: &str, healthy: bool) -> ServiceVips {
        ServiceVips {
            key: key.into(),
            pool: "p".into(),
            vips: vec![ip.parse().unwrap()],
            healthy,
            nodes: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_table_follows_changes_and_reports_only_real_ones() {
        let mut t = Table::default();
        let first = t.diff(&[svc("a/x", "10.0.0.1", true), svc("a/y", "10.0.0.2", true)]);
        assert_eq!(first.len(), 2);
        let touched = t.apply(&first);
        assert_eq!(touched.keys().collect::<Vec<_>>(), ["a/x", "a/y"]);
        assert!(touched
            .values()
            .all(|(before, after)| before.is_none() && after.is_some()));
        // The same list again: nothing to say.
        assert!(t
            .diff(&[svc("a/x", "10.0.0.1", true), svc("a/y", "10.0.0.2", true)])
            .is_empty());
        // One service changes, one goes: exactly those.
        let next = t.diff(&[svc("a/x", "10.0.0.1", false)]);
        assert_eq!(
            next,
            [
                Change::Remove("a/y".into()),
                Change::Put(Arc::new(svc("a/x", "10.0.0.1", false)))
            ]
        );
        let touched = t.apply(&next);
        assert_eq!(touched.len(), 2);
        assert!(touched["a/y"].1.is_none());
        assert!(!touched["a/x"].1.as_ref().unwrap().healthy);
        assert_eq!(t.len(), 1);
        // A put and its undo in one batch change nothing.
        let undo = [
            Change::Put(Arc::new(svc("a/x", "10.0.0.9", false))),
            Change::Put(Arc::new(svc("a/x", "10.0.0.1", false))),
            Change::Remove("a/z".into()),
        ];
        assert!(t.apply(&undo).is_empty());
    }
}
