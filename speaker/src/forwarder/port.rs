//! Runtime state of a forwarded port and its backends, shared by the
//! listener, the connections and the health checkers.

use crate::metrics::{BackendLabels, Metrics, PortLabels, RejectLabels, ServiceLabels};
use ferrolb_balance::health::{Health, Observation, State};
use ferrolb_balance::select::{Algorithm, Candidate, Selector};
use ferrolb_config::{ForwardMode, HealthCheck, Protocol, ProxyProtocol};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Identifies a listener: VIP, port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The VIP.
    pub vip: IpAddr,
    /// The port on the VIP.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.protocol,
            SocketAddr::new(self.vip, self.port)
        )
    }
}

/// One backend of a port.
pub struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Open connections to it.
    pub active: AtomicU64,
    up: AtomicBool,
    health: Mutex<Health>,
    /// Becomes true when connections to this backend must close now (drain over).
    kill: watch::Sender<bool>,
    /// Becomes true when the backend left the config; its checker stops.
    removed: AtomicBool,
    labels: BackendLabels,
}

impl Backend {
    fn new(addr: SocketAddr, hc: Option<&HealthCheck>, labels: BackendLabels) -> Backend {
        let (rise, fall) = hc.map(|h| (h.rise, h.fall)).unwrap_or((1, 1));
        Backend {
            addr,
            active: AtomicU64::new(0),
            up: AtomicBool::new(true),
            health: Mutex::new(Health::new(rise, fall)),
            kill: watch::Sender::new(false),
            removed: AtomicBool::new(false),
            labels,
        }
    }

    /// Whether health checks consider it up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A receiver that turns true when connections to this backend must close.
    pub fn kill_signal(&self) -> watch::Receiver<bool> {
        self.kill.subscribe()
    }

    /// Whether connections to this backend must close now.
    pub fn is_killed(&self) -> bool {
        *self.kill.borrow()
    }

    /// Closes every connection to this backend.
    pub fn kill(&self) {
        self.kill.send_replace(true);
    }

    /// Whether the backend left the configuration.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Metric labels of this backend.
    pub fn labels(&self) -> &BackendLabels {
        &self.labels
    }
}

/// The configurable part of a port, replaced on reload.
#[derive(Clone)]
pub struct PortConfig {
    /// Selection algorithm.
    pub algorithm: Algorithm,
    /// PROXY header to send, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Active checks, if any.
    pub health_check: Option<HealthCheck>,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// TCP idle timeout.
    pub idle_timeout: Duration,
    /// UDP flow idle timeout.
    pub udp_idle_timeout: Duration,
    /// UDP flow table size.
    pub udp_max_flows: usize,
    /// Relay TCP with splice(2) instead of copying through user space.
    pub splice: bool,
    /// Where the port is meant to be forwarded (the listener stays open in
    /// kernel mode too, for what the program does not see).
    pub mode: ForwardMode,
}

struct PortState {
    /// Shared so that each connection takes a reference, not a copy.
    config: Arc<PortConfig>,
    backends: Vec<Arc<Backend>>,
    selector: Selector,
}

/// State shared by all ports of one service: the connection limit and the
/// client allow list apply to the service as a whole.
pub struct ServiceRuntime {
    /// Service name.
    pub name: String,
    /// Open connections across the service's ports.
    pub active: AtomicU64,
    /// Connection limit.
    pub max_connections: AtomicU32,
    /// Connections one client address may hold (0: no limit).
    pub max_per_source: AtomicU32,
    /// Open connections by client address; an address leaves the map with
    /// its last connection, so the map never outgrows the connections.
    per_source: Mutex<HashMap<IpAddr, u32>>,
    source_ranges: RwLock<Vec<ferrolb_ipset::Cidr>>,
}

impl ServiceRuntime {
    /// A service runtime with no connection yet.
    pub fn new(
        name: &str,
        max_connections: u32,
        source_ranges: Vec<ferrolb_ipset::Cidr>,
    ) -> ServiceRuntime {
        ServiceRuntime {
            name: name.to_string(),
            active: AtomicU64::new(0),
            max_connections: AtomicU32::new(max_connections),
            max_per_source: AtomicU32::new(0),
            per_source: Mutex::new(HashMap::new()),
            source_ranges: RwLock::new(source_ranges),
        }
    }

    /// Applies reloaded settings.
    pub fn update(&self, max_connections: u32, source_ranges: Vec<ferrolb_ipset::Cidr>) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
        *self.source_ranges.write().expect("lock poisoned") = source_ranges;
    }

    /// The allowed client prefixes (empty: everyone).
    pub fn source_ranges(&self) -> Vec<ferrolb_ipset::Cidr> {
        self.source_ranges.read().expect("lock poisoned").clone()
    }

    /// Whether `client` may connect: an empty list allows everyone, as
    /// Kubernetes' `loadBalancerSourceRanges` does.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = unmap(client);
        let ranges = self.source_ranges.read().expect("lock poisoned");
        ranges.is_empty() || ranges.iter().any(|c| c.interval().contains(client))
    }

    /// Takes a connection slot for `client`, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<ActiveGuard, &'static str> {
        let per_source = self.max_per_source.load(Ordering::Relaxed);
        let client = unmap(client);
        if per_source > 0 {
            let mut m = self.per_source.lock().expect("lock poisoned");
            let n = m.entry(client).or_insert(0);
            if *n >= per_source {
                return Err("source_limit");
            }
            *n += 1;
        }
        let max = self.max_connections.load(Ordering::Relaxed) as u64;
        let prev = self.active.fetch_add(1, Ordering::AcqRel);
        let guard = ActiveGuard {
            service: Arc::clone(self),
            source: (per_source > 0).then_some(client),
        };
        if prev >= max {
            // Dropping the guard gives both counts back.
            drop(guard);
            return Err("limit");
        }
        Ok(guard)
    }
}

/// Releases a service connection slot (and its source's) when dropped.
pub struct ActiveGuard {
    service: Arc<ServiceRuntime>,
    source: Option<IpAddr>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.service.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.source {
            let mut m = self.service.per_source.lock().expect("lock poisoned");
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A forwarded port: its listener feeds connections that pick backends here.
pub struct PortRuntime {
    /// VIP, port, protocol.
    pub key: PortKey,
    /// The service it belongs to.
    pub service: Arc<ServiceRuntime>,
    state: Mutex<PortState>,
    /// Metrics and their labels.
    pub metrics: Arc<Metrics>,
    /// Labels for port-level metrics.
    pub labels: PortLabels,
    /// Stops the listener when set.
    pub stop: watch::Sender<bool>,
    /// Bytes from clients to backends (made once, not per connection).
    pub bytes_in: prometheus_client::metrics::counter::Counter,
    /// Bytes from backends to clients.
    pub bytes_out: prometheus_client::metrics::counter::Counter,
    /// Open connections on this port.
    pub active_gauge: prometheus_client::metrics::gauge::Gauge,
    /// Rejection counters by reason, made once: a flood of rejected packets
    /// (a source outside the ranges, an overload) builds no label per packet.
    rejected: Vec<(&'static str, prometheus_client::metrics::counter::Counter)>,
}

/// Every reason the forwarder rejects a connection or datagram for.
pub const REJECT_REASONS: [&str; 6] = [
    "source_range",
    "source_limit",
    "no_backend",
    "connect_failed",
    "overload",
    "limit",
];

impl PortRuntime {
    /// A port with the given backends (all initially up).
    pub fn new(
        key: PortKey,
        service: Arc<ServiceRuntime>,
        config: PortConfig,
        weights: &[(SocketAddr, u32)],
        metrics: Arc<Metrics>,
    ) -> Arc<PortRuntime> {
        let labels = PortLabels {
            service: service.name.clone(),
            port: format!("{}/{}", key.port, key.protocol),
        };
        let direction = |d: &str| {
            metrics
                .bytes
                .get_or_create(&crate::metrics::DirectionLabels {
                    service: labels.service.clone(),
                    port: labels.port.clone(),
                    direction: d.to_string(),
                })
                .clone()
        };
        let (bytes_in, bytes_out) = (direction("in"), direction("out"));
        let active_gauge = metrics.active.get_or_create(&labels).clone();
        let rejected = REJECT_REASONS
            .iter()
            .map(|r| {
                let c = metrics
                    .rejected
                    .get_or_create(&RejectLabels {
                        service: labels.service.clone(),
                        port: labels.port.clone(),
                        reason: r.to_string(),
                    })
                    .clone();
                (*r, c)
            })
            .collect();
        let port = Arc::new(PortRuntime {
            key,
            service,
            state: Mutex::new(PortState {
                selector: Selector::new(config.algorithm, Vec::new()),
                config: Arc::new(config),
                backends: Vec::new(),
            }),
            metrics,
            labels,
            stop: watch::Sender::new(false),
            bytes_in,
            bytes_out,
            active_gauge,
            rejected,
        });
        port.set_backends(weights);
        port
    }

    fn backend_labels(&self, addr: SocketAddr) -> BackendLabels {
        BackendLabels {
            service: self.labels.service.clone(),
            port: self.labels.port.clone(),
            backend: addr.to_string(),
        }
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<PortConfig> {
        Arc::clone(&self.state.lock().expect("lock poisoned").config)
    }

    /// Replaces the configuration (backends are set separately).
    pub fn set_config(&self, config: PortConfig) {
        let mut st = self.state.lock().expect("lock poisoned");
        if st.config.algorithm != config.algorithm {
            st.selector = Selector::new(config.algorithm, Vec::new());
        }
        st.config = Arc::new(config);
        Self::refresh(&mut st);
    }

    /// Sets the backend list. Backends that stay keep their health, counters
    /// and connections; new ones start up; the removed ones are returned
    /// (marked removed) for the caller to drain.
    pub fn set_backends(
        &self,
        wanted: &[(SocketAddr, u32)],
    ) -> (Vec<Arc<Backend>>, Vec<Arc<Backend>>) {
        let mut st = self.state.lock().expect("lock poisoned");
        let mut next = Vec::with_capacity(wanted.len());
        let mut added = Vec::new();
        for (addr, _) in wanted {
            match st.backends.iter().find(|b| b.addr == *addr) {
                Some(b) => next.push(Arc::clone(b)),
                None => {
                    let b = Arc::new(Backend::new(
                        *addr,
                        st.config.health_check.as_ref(),
                        self.backend_labels(*addr),
                    ));
                    self.metrics.backend_up.get_or_create(&b.labels).set(1);
                    // At 0 from the start, so rate() and the dashboard see a
                    // backend that has had no connection or failure yet.
                    let _ = self.metrics.connections.get_or_create(&b.labels);
                    let _ = self.metrics.connect_failures.get_or_create(&b.labels);
                    added.push(Arc::clone(&b));
                    next.push(b);
                }
            }
        }
        let removed: Vec<Arc<Backend>> = st
            .backends
            .iter()
            .filter(|b| !wanted.iter().any(|(a, _)| *a == b.addr))
            .cloned()
            .collect();
        for b in &removed {
            b.removed.store(true, Ordering::Relaxed);
            self.metrics.backend_up.remove(&b.labels);
            self.metrics.connections.remove(&b.labels);
            self.metrics.connect_failures.remove(&b.labels);
        }
        st.backends = next;
        let weights: Vec<u32> = wanted.iter().map(|(_, w)| *w).collect();
        Self::refresh_with(&mut st, &weights);
        (added, removed)
    }

    fn refresh(st: &mut PortState) {
        let weights: Vec<u32> = st.selector.candidates().iter().map(|c| c.weight).collect();
        Self::refresh_with(st, &weights);
    }

    fn refresh_with(st: &mut PortState, weights: &[u32]) {
        let candidates = st
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| Candidate {
                name: b.addr.to_string(),
                weight: weights.get(i).copied().unwrap_or(1),
                up: b.is_up(),
            })
            .collect();
        st.selector.update(candidates);
    }

    /// Each backend with its weight and whether it is up, in configuration
    /// order: what the kernel data path's Maglev table is built from.
    pub fn weighted_backends(&self) -> Vec<(SocketAddr, u32, bool)> {
        let st = self.state.lock().expect("lock poisoned");
        st.backends
            .iter()
            .zip(st.selector.candidates())
            .map(|(b, c)| (b.addr, c.weight, b.is_up()))
            .collect()
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> Vec<Arc<Backend>> {
        self.state.lock().expect("lock poisoned").backends.clone()
    }

    /// Whether some backend may take new connections.
    pub fn any_up(&self) -> bool {
        self.state
            .lock()
            .expect("lock poisoned")
            .selector
            .any_eligible()
    }

    /// Picks a backend for `client`, skipping those in `exclude` (addresses
    /// that already failed for this connection).
    pub fn pick(&self, client: IpAddr, exclude: &[SocketAddr]) -> Option<Arc<Backend>> {
        let mut st = self.state.lock().expect("lock poisoned");
        let active: Vec<u64> = st
            .backends
            .iter()
            .map(|b| b.active.load(Ordering::Relaxed))
            .collect();
        let excluded: Vec<usize> = st
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| exclude.contains(&b.addr))
            .map(|(i, _)| i)
            .collect();
        let i = st.selector.pick(unmap(client), &active, &excluded)?;
        st.backends.get(i).cloned()
    }

    /// Feeds a health observation; on a state change updates selection,
    /// metrics and the log. Returns the new state if it changed.
    pub fn observe(&self, backend: &Backend, o: Observation) -> Option<State> {
        if o == Observation::ConnectFailed {
            self.metrics
                .connect_failures
                .get_or_create(&backend.labels)
                .inc();
        }
        let mut st = self.state.lock().expect("lock poisoned");
        // Without active checks a backend that goes down could never come back: passive failures alone do not count.
        if o == Observation::ConnectFailed && st.config.health_check.is_none() {
            return None;
        }
        let changed = backend.health.lock().expect("lock poisoned").observe(o)?;
        backend.up.store(changed == State::Up, Ordering::Relaxed);
        if !backend.is_removed() {
            self.metrics
                .backend_up
                .get_or_create(&backend.labels)
                .set(i64::from(changed == State::Up));
        }
        Self::refresh(&mut st);
        let any = st.selector.any_eligible();
        drop(st);
        match changed {
            State::Up => {
                tracing::info!(service = %self.service.name, port = %self.key, backend = %backend.addr, "backend up")
            }
            State::Down => {
                tracing::warn!(service = %self.service.name, port = %self.key, backend = %backend.addr, cause = ?o, "backend down")
            }
        }
        if !any {
            tracing::warn!(service = %self.service.name, port = %self.key, "every backend is down; new connections are refused");
        }
        Some(changed)
    }

    /// Counts a refused connection or datagram.
    pub fn reject(&self, reason: &'static str) {
        match self.rejected.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                debug_assert!(false, "reason {reason} missing from REJECT_REASONS");
                self.metrics
                    .rejected
                    .get_or_create(&RejectLabels {
                        service: self.labels.service.clone(),
                        port: self.labels.port.clone(),
                        reason: reason.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// Labels for the service-level metric.
    pub fn service_labels(&self) -> ServiceLabels {
        ServiceLabels {
            service: self.service.name.clone(),
        }
    }
}
