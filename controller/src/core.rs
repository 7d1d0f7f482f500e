//! The controller's decisions, free of I/O: Services and configurations
//! go in, status writes and Events come out. The runner feeds it from
//! watches and carries out what it returns.
//!
//! Invariants: nothing is allocated before the first full sync and a valid
//! configuration; existing assignments are restored (oldest first) before
//! anything new is handed out; a valid address never moves; an invalid
//! configuration or request changes nothing that works.

use crate::service::{Handling, ServiceView};
use ferrolb_alloc::{AllocError, Allocator, Assignment, Request, ServiceKey};
use ferrolb_config::Config;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

/// What an Event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    /// A Service, with its uid.
    Service(ServiceKey, String),
    /// The configuration ConfigMap.
    Config,
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOut {
    /// The object.
    pub regarding: Regarding,
    /// Normal or Warning.
    pub severity: Severity,
    /// `IPAllocated`, `AllocationFailed`, `IPReleased` or `ConfigInvalid`.
    pub reason: &'static str,
    /// What happened, for an operator.
    pub note: String,
}

/// The status a Service should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Addresses, primary family first; empty clears the status.
    pub ips: Vec<IpAddr>,
    /// `ipMode` of every entry: `VIP`, or `Proxy` for forwarded services.
    pub ip_mode: &'static str,
    /// The pool annotation; `None` removes it.
    pub pool: Option<String>,
}

/// What the runner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write `status.loadBalancer` and the pool annotation of a Service.
    Status {
        /// Which Service.
        key: ServiceKey,
        /// What to write.
        desired: Desired,
        /// Whether the pool annotation differs too (it is a separate write).
        write_pool: bool,
    },
    /// Publish an Event.
    Event(EventOut),
}

/// Every value of the allocation failures' `reason` label: the metric
/// starts each at 0, so `rate()` and `increase()` see a first failure.
pub const FAILURE_REASONS: [&str; 12] = [
    "pool_exhausted",
    "outside_pools",
    "buggy_ip",
    "ip_in_use",
    "port_collision",
    "backend_mismatch",
    "unknown_pool",
    "pool_not_allowed",
    "no_pool",
    "family_unavailable",
    "bad_request",
    "invalid_request",
];

/// Metric label of an allocation failure (one of [`FAILURE_REASONS`]).
pub fn failure_reason(e: &AllocError) -> &'static str {
    FAILURE_REASONS[match e {
        AllocError::Exhausted { .. } => 0,
        AllocError::OutsidePools { .. } => 1,
        AllocError::BuggyIp { .. } => 2,
        AllocError::InUse { .. } => 3,
        AllocError::PortCollision { .. } => 4,
        AllocError::BackendMismatch { .. } => 5,
        AllocError::UnknownPool { .. } => 6,
        AllocError::PoolNotAllowed { .. } => 7,
        AllocError::NoPool { .. } => 8,
        AllocError::FamilyUnavailable { .. } => 9,
        AllocError::BadRequest(_) => 10,
    }]
}

/// Counts the runner turns into metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Successful allocations that changed a Service's addresses.
    pub allocations: u64,
    /// Failures by [`failure_reason`] (plus `invalid_request`), counted once per distinct failure.
    pub failures: BTreeMap<&'static str, u64>,
    /// Releases.
    pub releases: u64,
}

#[derive(Debug)]
struct Tracked {
    view: ServiceView,
    /// The last failure reported, so the same one is not reported again.
    failure: Option<String>,
    /// A status write in flight: not asked for again until it is seen or fails.
    pending: Option<Desired>,
}

/// The controller state machine.
pub struct Core {
    alloc: Allocator,
    config: Option<Config>,
    services: BTreeMap<ServiceKey, Tracked>,
    synced: bool,
    started: bool,
    config_error: Option<String>,
    tally: Tally,
    /// Tracked Services that are not `Ignored`.
    handled: usize,
    /// Namespace labels, for pools' `namespaceSelector`.
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

fn is_handled(v: &ServiceView) -> bool {
    !matches!(v.handling, Handling::Ignored(_))
}

fn fmt_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for Core {
    fn default() -> Core {
        Core::new()
    }
}

impl Core {
    /// A controller with no configuration and nothing synced.
    pub fn new() -> Core {
        Core {
            alloc: Allocator::new(&[]),
            config: None,
            services: BTreeMap::new(),
            synced: false,
            started: false,
            config_error: None,
            tally: Tally::default(),
            handled: 0,
            namespace_labels: BTreeMap::new(),
        }
    }

    /// A namespace's labels (`None`: it was deleted). The Services in it
    /// are re-checked against the pools' namespace selectors.
    pub fn namespace(
        &mut self,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Vec<Output> {
        let before = match &labels {
            Some(l) => self.namespace_labels.insert(name.to_string(), l.clone()),
            None => self.namespace_labels.remove(name),
        };
        if before == labels {
            return Vec::new();
        }
        let labels = labels.unwrap_or_default();
        // Keys sort by namespace first: the namespace's Services are one
        // range, so the initial list of every namespace costs no scan of
        // every Service per namespace.
        let keys: Vec<ServiceKey> = self
            .services
            .range(ServiceKey::new(name, "")..)
            .map(|(k, _)| k)
            .take_while(|k| *k.namespace == *name)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for key in keys {
            if let Some(t) = self.services.get_mut(&key) {
                if let Handling::Managed { request, .. } = &mut t.view.handling {
                    if request.namespace_labels == labels {
                        continue;
                    }
                    request.namespace_labels = labels.clone();
                }
            }
            if self.started {
                out.extend(self.reconcile(&key));
            }
        }
        out
    }

    /// Whether allocation has started (synced, configured, restored).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Whether the current ConfigMap content is invalid and an older configuration is in force.
    pub fn config_stale(&self) -> bool {
        self.config_error.is_some()
    }

    /// The configuration in force.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    /// The allocator (for pool statistics).
    pub fn allocator(&self) -> &Allocator {
        &self.alloc
    }

    /// Counts since start.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Services handled and how many of them hold addresses. O(1): the
    /// runner asks after every event.
    pub fn service_counts(&self) -> (usize, usize) {
        (self.handled, self.alloc.len())
    }

    /// The initial list of Services and the ConfigMap has been seen.
    pub fn synced(&mut self) -> Vec<Output> {
        self.synced = true;
        self.maybe_start()
    }

    /// The ConfigMap changed: a parsed configuration, or why it is invalid.
    pub fn config_changed(&mut self, config: Result<Config, String>) -> Vec<Output> {
        let mut out = Vec::new();
        match config {
            Err(message) => {
                if self.config_error.as_deref() != Some(message.as_str()) {
                    let kept = if self.config.is_some() {
                        "the last valid configuration stays in force"
                    } else {
                        "no configuration is in force: nothing is allocated until this is fixed"
                    };
                    out.push(Output::Event(EventOut {
                        regarding: Regarding::Config,
                        severity: Severity::Warning,
                        reason: "ConfigInvalid",
                        note: format!("{message}\n{kept}"),
                    }));
                }
                self.config_error = Some(message);
            }
            Ok(config) => {
                self.config_error = None;
                if self.started {
                    let released = self.alloc.reconfigure(&config.pools);
                    self.config = Some(config);
                    for (key, e) in released {
                        self.tally.releases += 1;
                        if let Some(t) = self.services.get(&key) {
                            out.push(Output::Event(EventOut {
                                regarding: Regarding::Service(key.clone(), t.view.uid.clone()),
                                severity: Severity::Warning,
                                reason: "IPReleased",
                                note: format!("the new configuration no longer allows its addresses ({e}); allocating again"),
                            }));
                        }
                    }
                    out.extend(self.reconcile_all());
                } else {
                    self.config = Some(config);
                    out.extend(self.maybe_start());
                }
            }
        }
        out
    }

    /// A Service was added or changed.
    pub fn upsert(&mut self, mut view: ServiceView) -> Vec<Output> {
        let key = view.key.clone();
        if let Handling::Managed { request, .. } = &mut view.handling {
            request.namespace_labels = self
                .namespace_labels
                .get(&*key.namespace)
                .cloned()
                .unwrap_or_default();
        }
        let mut out = Vec::new();
        if let Some(t) = self.services.get(&key) {
            if t.view.uid != view.uid && !t.view.uid.is_empty() {
                // Deleted and created again under the same name while we were not looking.
                out.extend(self.delete(&key));
            }
        }
        let new_handled = is_handled(&view);
        let t = match self.services.entry(key.clone()) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let t = e.into_mut();
                match (is_handled(&t.view), new_handled) {
                    (false, true) => self.handled += 1,
                    (true, false) => self.handled -= 1,
                    _ => {}
                }
                t
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                self.handled += usize::from(new_handled);
                e.insert(Tracked {
                    view: view.clone(),
                    failure: None,
                    pending: None,
                })
            }
        };
        if t.pending
            .as_ref()
            .is_some_and(|d| observed_matches(&view, d))
        {
            t.pending = None;
        }
        t.view = view;
        if self.started {
            out.extend(self.reconcile(&key));
        }
        out
    }

    /// A Service was deleted.
    pub fn delete(&mut self, key: &ServiceKey) -> Vec<Output> {
        let mut out = Vec::new();
        let tracked = self.services.remove(key);
        if tracked.as_ref().is_some_and(|t| is_handled(&t.view)) {
            self.handled -= 1;
        }
        if let Some(a) = self.alloc.release(key) {
            self.tally.releases += 1;
            if let Some(t) = tracked {
                out.push(Output::Event(EventOut {
                    regarding: Regarding::Service(key.clone(), t.view.uid),
                    severity: Severity::Normal,
                    reason: "IPReleased",
                    note: format!("released {} (service deleted)", fmt_ips(&a.ips)),
                }));
            }
            if self.started {
                out.extend(self.retry_waiting());
            }
        }
        out
    }

    /// After addresses were freed: Services still waiting for one try
    /// again, oldest first, without waiting for their next update.
    fn retry_waiting(&mut self) -> Vec<Output> {
        let mut waiting: Vec<(i64, ServiceKey)> = self
            .services
            .values()
            .filter(|t| t.failure.is_some() && self.alloc.assignment(&t.view.key).is_none())
            .filter_map(|t| match &t.view.handling {
                Handling::Managed { request, .. } => Some((request.created, t.view.key.clone())),
                _ => None,
            })
            .collect();
        waiting.sort();
        waiting
            .into_iter()
            .flat_map(|(_, k)| self.reconcile(&k))
            .collect()
    }

    /// A status write failed: the next look at the Service writes again.
    pub fn forget_pending(&mut self, key: &ServiceKey) {
        if let Some(t) = self.services.get_mut(key) {
            t.pending = None;
        }
    }

    /// A failed status write is due for a retry: the Service is looked at again.
    pub fn write_failed(&mut self, key: &ServiceKey) -> Vec<Output> {
        self.forget_pending(key);
        if self.started {
            self.reconcile(key)
        } else {
            Vec::new()
        }
    }

    /// After a re-list: Services not in `present` were deleted meanwhile.
    pub fn retain(&mut self, present: &std::collections::BTreeSet<ServiceKey>) -> Vec<Output> {
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        gone.iter().flat_map(|k| self.delete(k)).collect()
    }

    fn maybe_start(&mut self) -> Vec<Output> {
        if self.started || !self.synced || self.config.is_none() {
            return Vec::new();
        }
        self.started = true;
        let pools = &self.config.as_ref().expect("checked above").pools;
        self.alloc = Allocator::new(pools);
        let existing: Vec<(Request, Vec<IpAddr>)> = self
            .services
            .values()
            .filter_map(|t| match &t.view.handling {
                Handling::Managed { request, .. } if !t.view.observed.ips.is_empty() => {
                    Some(((**request).clone(), t.view.observed.ips.clone()))
                }
                _ => None,
            })
            .collect();
        let report = self.alloc.restore(existing);
        let mut out = Vec::new();
        for (key, e) in report.rejected {
            let t = &self.services[&key];
            let note = match &e {
                AllocError::InUse { ip, holder } => format!(
                    "{ip} is also claimed by {holder}, which is older and keeps it; this service gets another address"
                ),
                other => format!("its addresses {} cannot be kept: {other}; allocating again", fmt_ips(&t.view.observed.ips)),
            };
            out.push(Output::Event(EventOut {
                regarding: Regarding::Service(key.clone(), t.view.uid.clone()),
                severity: Severity::Warning,
                reason: "IPReleased",
                note,
            }));
        }
        // Invalid requests keep the addresses their status shows if nobody else holds them.
        let invalid: Vec<ServiceKey> = self
            .services
            .values()
            .filter(|t| matches!(t.view.handling, Handling::Invalid { .. }))
            .map(|t| t.view.key.clone())
            .collect();
        for key in invalid {
            let t = &self.services[&key];
            if t.view.observed.ips.is_empty() {
                continue;
            }
            let mut req = Request::new(key.clone());
            req.created = i64::MAX;
            req.families = t
                .view
                .observed
                .ips
                .iter()
                .map(|ip| ferrolb_ipset::Family::of(*ip))
                .collect();
            let _ = self.alloc.restore(vec![(req, t.view.observed.ips.clone())]);
        }
        out.extend(self.reconcile_all());
        out
    }

    /// Every handled Service, oldest first, so that the outcome does not
    /// depend on the order events arrived in.
    fn reconcile_all(&mut self) -> Vec<Output> {
        let mut keys: Vec<(i64, ServiceKey)> = self
            .services
            .values()
            .map(|t| {
                let created = match &t.view.handling {
                    Handling::Managed { request, .. } => request.created,
                    _ => i64::MAX,
                };
                (created, t.view.key.clone())
            })
            .collect();
        keys.sort();
        keys.into_iter()
            .flat_map(|(_, k)| self.reconcile(&k))
            .collect()
    }

    fn reconcile(&mut self, key: &ServiceKey) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(t) = self.services.get(key) else {
            return out;
        };
        let uid = t.view.uid.clone();
        let regarding = Regarding::Service(key.clone(), uid);
        let before = self.alloc.assignment(key).cloned();
        let (proxy, failure) = match t.view.handling.clone() {
            Handling::Ignored(why) => {
                if let Some(a) = self.alloc.release(key) {
                    self.tally.releases += 1;
                    out.push(Output::Event(EventOut {
                        regarding,
                        severity: Severity::Normal,
                        reason: "IPReleased",
                        note: format!("released {} ({why})", fmt_ips(&a.ips)),
                    }));
                    // Clear the status we wrote: nobody announces the address any more.
                    out.extend(self.status_output(key, None, false));
                    if let Some(t) = self.services.get_mut(key) {
                        t.failure = None;
                    }
                    out.extend(self.retry_waiting());
                }
                if let Some(t) = self.services.get_mut(key) {
                    t.failure = None;
                }
                return out;
            }
            Handling::Invalid { reason, proxy } => (proxy, Some((FAILURE_REASONS[11], reason))),
            Handling::Managed { request, proxy } => match self.alloc.allocate(&request) {
                Ok(a) => {
                    if before.as_ref() != Some(&a) {
                        self.tally.allocations += 1;
                        let note = match &before {
                            Some(b) => format!("assigned {} (was {})", a, fmt_ips(&b.ips)),
                            None => format!("assigned {a}"),
                        };
                        out.push(Output::Event(EventOut {
                            regarding: regarding.clone(),
                            severity: Severity::Normal,
                            reason: "IPAllocated",
                            note,
                        }));
                    }
                    (proxy, None)
                }
                Err(e) => (proxy, Some((failure_reason(&e), e.to_string()))),
            },
        };
        let held = self.alloc.assignment(key).cloned();
        let t = self.services.get_mut(key).expect("present above");
        match failure {
            Some((label, message)) => {
                let message = match &held {
                    Some(a) => format!("{message}; keeping {}", fmt_ips(&a.ips)),
                    None => message,
                };
                if t.failure.as_deref() != Some(message.as_str()) {
                    *self.tally.failures.entry(label).or_default() += 1;
                    out.push(Output::Event(EventOut {
                        regarding,
                        severity: Severity::Warning,
                        reason: "AllocationFailed",
                        note: message.clone(),
                    }));
                    t.failure = Some(message);
                }
            }
            None => t.failure = None,
        }
        out.extend(self.status_output(key, held.as_ref(), proxy));
        out
    }

    fn status_output(
        &mut self,
        key: &ServiceKey,
        held: Option<&Assignment>,
        proxy: bool,
    ) -> Option<Output> {
        let t = self.services.get_mut(key)?;
        let desired = Desired {
            ips: held.map(|a| a.ips.clone()).unwrap_or_default(),
            ip_mode: if proxy { "Proxy" } else { "VIP" },
            pool: held.map(|a| a.pool.to_string()),
        };
        if observed_matches(&t.view, &desired) || t.pending.as_ref() == Some(&desired) {
            return None;
        }
        if desired.ips.is_empty()
            && t.view.observed.ips.is_empty()
            && t.view.observed.pool.is_none()
        {
            return None;
        }
        t.pending = Some(desired.clone());
        let write_pool = t.view.observed.pool != desired.pool;
        Some(Output::Status {
            key: key.clone(),
            desired,
            write_pool,
        })
    }
}

fn observed_matches(view: &ServiceView, d: &Desired) -> bool {
    let o = &view.observed;
    if o.ips != d.ips || o.pool != d.pool {
        return false;
    }
    d.ips.is_empty() || o.ip_modes.iter().all(|m| m.as_deref() == Some(d.ip_mode))
}
