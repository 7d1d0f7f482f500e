//! What a service asks of the allocator, and what it gets.

use ferrolb_config::Protocol;
use ferrolb_ipset::Family;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Identifies a service: `namespace/name` (standalone services use the
/// namespace `standalone`). Cloning is cheap (shared strings): the
/// allocator keeps a key per service and per held address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The name.
    pub name: Arc<str>,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Kubernetes' `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FamilyPolicy {
    /// One address, of the first family listed.
    #[default]
    SingleStack,
    /// Both families if a pool offers them, otherwise one.
    PreferDualStack,
    /// Both families or nothing.
    RequireDualStack,
}

/// A port a service exposes; two services may share an IP only if no
/// (protocol, port) is exposed by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Everything the allocator needs to know about a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Which service.
    pub key: ServiceKey,
    /// Sort key for "oldest first" (a creation timestamp); ties are broken by `key`.
    pub created: i64,
    /// The service's labels, matched by pool service selectors.
    pub labels: BTreeMap<String, String>,
    /// The labels of the service's namespace, matched by pool namespace
    /// selectors.
    pub namespace_labels: BTreeMap<String, String>,
    /// Families in order of preference (`spec.ipFamilies`); empty means IPv4.
    pub families: Vec<Family>,
    /// `families` is what the API server set (it fills `ipFamilies` from
    /// the cluster's families): a dual-stack policy never adds a family it
    /// left out, which on a single-stack cluster kube-proxy could not serve.
    pub families_set_by_cluster: bool,
    /// Single or dual stack.
    pub policy: FamilyPolicy,
    /// Specific addresses asked for, at most one per family.
    pub requested_ips: Vec<IpAddr>,
    /// A specific pool asked for (may have `autoAssign: false`).
    pub requested_pool: Option<String>,
    /// Services with the same key may share an IP when their ports differ.
    pub sharing_key: Option<String>,
    /// Exposed ports.
    pub ports: Vec<Port>,
    /// Set for `externalTrafficPolicy: Local` (the pod selector): services
    /// sharing an IP must agree on it, since they must land on the same nodes.
    pub backend_key: Option<String>,
}

impl Request {
    /// A request with defaults: IPv4, single stack, no preferences.
    pub fn new(key: ServiceKey) -> Request {
        Request {
            key,
            created: 0,
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            families: Vec::new(),
            families_set_by_cluster: false,
            policy: FamilyPolicy::SingleStack,
            requested_ips: Vec::new(),
            requested_pool: None,
            sharing_key: None,
            ports: Vec::new(),
            backend_key: None,
        }
    }

    /// The families wanted, primary first, and how many of them are required.
    pub(crate) fn wanted_families(&self) -> (Vec<Family>, usize) {
        let mut fams: Vec<Family> = Vec::new();
        for f in &self.families {
            if !fams.contains(f) {
                fams.push(*f);
            }
        }
        if fams.is_empty() {
            fams.push(Family::V4);
        }
        match self.policy {
            FamilyPolicy::SingleStack => (vec![fams[0]], 1),
            FamilyPolicy::PreferDualStack | FamilyPolicy::RequireDualStack => {
                if fams.len() == 1 && !self.families_set_by_cluster {
                    let other = if fams[0] == Family::V4 {
                        Family::V6
                    } else {
                        Family::V4
                    };
                    fams.push(other);
                }
                let required = if self.policy == FamilyPolicy::RequireDualStack {
                    2
                } else {
                    1
                };
                (fams, required)
            }
        }
    }
}

/// The addresses a service holds and the pool they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The pool (shared with the allocator's copy of the name).
    pub pool: Arc<str>,
    /// One address per family, primary family first.
    pub ips: Vec<IpAddr>,
}

impl fmt::Display for Assignment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self.ips.iter().map(|ip| ip.to_string()).collect();
        write!(f, "{} from pool {:?}", ips.join(","), self.pool)
    }
}
