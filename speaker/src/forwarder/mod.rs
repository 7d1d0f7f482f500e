//! ferrolb's L4 data path: TCP and UDP proxies from VIP:port to backends,
//! with active and passive health checks, balancing, PROXY protocol,
//! source ranges, limits, reload without dropping connections, and drain.
//!
//! Selection, health state and PROXY headers are pure code in
//! `ferrolb-balance`; this module owns sockets, tasks and timers.

pub mod health;
pub mod kernel;
pub mod port;
pub mod socket;
pub mod splice;
pub mod tcp;
pub mod udp;

use crate::metrics::{Metrics, ServiceLabels};
use crate::plan::Plan;
use ferrolb_config::{Algorithm as CfgAlgorithm, ForwarderSettings, Protocol};
use port::{Backend, PortConfig, PortKey, PortRuntime, ServiceRuntime};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Waits until a boolean watch turns true (or its sender is gone). Unlike
/// `wait_for`, it holds no borrow across an await, so tasks stay `Send`.
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {key} for service {service}: {source}")]
pub struct BindError {
    /// The listener.
    pub key: PortKey,
    /// Its service.
    pub service: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Counts live connections so that shutdown can wait for them.
#[derive(Default)]
pub struct ConnTracker {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a connection task; its drop ends the connection's count.
pub struct ConnToken(Arc<ConnTracker>);

impl ConnTracker {
    /// Counts a new connection.
    pub fn enter(self: &Arc<Self>) -> ConnToken {
        self.count.fetch_add(1, Ordering::AcqRel);
        ConnToken(Arc::clone(self))
    }

    /// Open connections.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for ConnToken {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn algorithm(a: CfgAlgorithm) -> ferrolb_balance::select::Algorithm {
    use ferrolb_balance::select::Algorithm as A;
    match a {
        CfgAlgorithm::RoundRobin => A::RoundRobin,
        CfgAlgorithm::LeastConnections => A::LeastConnections,
        CfgAlgorithm::Maglev => A::Maglev,
    }
}

/// Every forwarded port of this host.
pub struct Forwarder {
    metrics: Arc<Metrics>,
    services: HashMap<String, Arc<ServiceRuntime>>,
    ports: BTreeMap<PortKey, Arc<PortRuntime>>,
    conns: Arc<ConnTracker>,
    drain: Duration,
    health: watch::Sender<BTreeMap<String, bool>>,
    kernel: kernel::KernelPath,
}

impl Forwarder {
    /// A forwarder with no port.
    pub fn new(metrics: Arc<Metrics>) -> Forwarder {
        Forwarder {
            metrics: Arc::clone(&metrics),
            services: HashMap::new(),
            ports: BTreeMap::new(),
            conns: Arc::new(ConnTracker::default()),
            drain: ForwarderSettings::default().drain_timeout,
            health: watch::Sender::new(BTreeMap::new()),
            kernel: kernel::KernelPath::new(Arc::clone(&metrics)),
        }
    }

    /// The listeners currently open.
    pub fn ports(&self) -> Vec<Arc<PortRuntime>> {
        self.ports.values().cloned().collect()
    }

    /// Open client connections (TCP) across all ports.
    pub fn connections(&self) -> usize {
        self.conns.count()
    }

    /// Per service, whether some backend takes connections; the
    /// announcement layer withdraws a VIP whose service is down.
    pub fn service_health(&self) -> watch::Receiver<BTreeMap<String, bool>> {
        self.health.subscribe()
    }

    /// The interfaces VIPs are announced on (the `l2` entries' names;
    /// empty: every candidate): the kernel data path attaches there.
    pub fn set_interfaces(&mut self, names: crate::l2::iface::Wanted) {
        self.kernel.set_interfaces(names);
    }

    /// Kernel-mode ports that went to user space since the last call.
    pub fn take_kernel_fallbacks(&mut self) -> Vec<kernel::Fallback> {
        self.kernel.take_fallbacks()
    }

    /// Whether the kernel data path is loaded and serving.
    pub fn kernel_active(&self) -> bool {
        self.kernel.active()
    }

    /// Recomputes per-service health from the ports and brings the kernel
    /// data path's maps up to date (cheap; called on a timer).
    pub fn refresh_health(&mut self) {
        let ports: Vec<Arc<PortRuntime>> = self.ports.values().cloned().collect();
        self.kernel.sync(&ports);
        let mut by_service: BTreeMap<String, bool> = BTreeMap::new();
        for p in self.ports.values() {
            *by_service.entry(p.service.name.clone()).or_insert(false) |= p.any_up();
        }
        for (name, up) in &by_service {
            self.metrics
                .service_up
                .get_or_create(&ServiceLabels {
                    service: name.clone(),
                })
                .set(i64::from(*up));
        }
        self.health.send_if_modified(|old| {
            if *old == by_service {
                false
            } else {
                for (name, up) in &by_service {
                    if old.get(name) != Some(up) {
                        if *up {
                            tracing::info!(service = %name, "service up");
                        } else {
                            tracing::warn!(service = %name, "service down: no backend takes connections");
                        }
                    }
                }
                *old = by_service.clone();
                true
            }
        });
    }

    /// Makes the forwarder serve `plan`: opens new listeners, updates the
    /// backends of existing ones in place (connections to backends that stay
    /// are untouched), drains removed backends and ports for the drain
    /// timeout, and closes listeners that are gone. Listeners that cannot
    /// be opened are reported; everything else still applies.
    pub fn apply(&mut self, plan: &Plan, settings: &ForwarderSettings) -> Vec<BindError> {
        self.drain = settings.drain_timeout;
        let mut errors = Vec::new();
        let mut wanted: BTreeMap<PortKey, ()> = BTreeMap::new();
        let mut services_seen = Vec::new();
        for planned in &plan.services {
            let s = &planned.service;
            if s.ports.is_empty() {
                continue;
            }
            let Some(vip) = planned.assignment.ips.first().copied() else {
                continue;
            };
            let max = s.max_connections.unwrap_or(settings.max_connections);
            let svc = match self.services.get(&s.name) {
                Some(rt) => {
                    rt.update(max, s.source_ranges.clone());
                    Arc::clone(rt)
                }
                None => Arc::new(ServiceRuntime::new(&s.name, max, s.source_ranges.clone())),
            };
            svc.max_per_source
                .store(settings.max_connections_per_source, Ordering::Relaxed);
            self.services.insert(s.name.clone(), Arc::clone(&svc));
            services_seen.push(s.name.clone());
            for p in &s.ports {
                let key = PortKey {
                    vip,
                    port: p.port,
                    protocol: p.protocol,
                };
                let config = PortConfig {
                    algorithm: algorithm(p.algorithm),
                    proxy_protocol: p.proxy_protocol,
                    health_check: p.health_check.clone(),
                    connect_timeout: settings.connect_timeout,
                    idle_timeout: settings.idle_timeout,
                    udp_idle_timeout: settings.udp_idle_timeout,
                    udp_max_flows: settings.udp_max_flows as usize,
                    splice: settings.splice,
                    mode: p.effective_mode(settings.mode),
                };
                let weights: Vec<(SocketAddr, u32)> =
                    p.backends.iter().map(|b| (b.address, b.weight)).collect();
                match self.ports.get(&key) {
                    Some(existing) if existing.service.name == s.name => {
                        existing.set_config(config);
                        let (added, removed) = existing.set_backends(&weights);
                        for b in added {
                            tokio::spawn(health::run(Arc::downgrade(existing), b));
                        }
                        self.drain_later(removed);
                        wanted.insert(key, ());
                    }
                    other => {
                        if other.is_some() {
                            // The VIP:port moved to another service: the old one drains, the new one takes over.
                            if let Some(old) = self.ports.remove(&key) {
                                self.retire(old);
                            }
                        }
                        match self.open(key, Arc::clone(&svc), config, &weights) {
                            Ok(port) => {
                                self.ports.insert(key, port);
                                wanted.insert(key, ());
                            }
                            Err(e) => errors.push(BindError {
                                key,
                                service: s.name.clone(),
                                source: e,
                            }),
                        }
                    }
                }
            }
        }
        let gone: Vec<PortKey> = self
            .ports
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(old) = self.ports.remove(&key) {
                tracing::info!(port = %key, service = %old.service.name, "port removed; draining its connections");
                self.retire(old);
            }
        }
        self.services.retain(|name, _| services_seen.contains(name));
        self.refresh_health();
        errors
    }

    fn open(
        &self,
        key: PortKey,
        svc: Arc<ServiceRuntime>,
        config: PortConfig,
        weights: &[(SocketAddr, u32)],
    ) -> std::io::Result<Arc<PortRuntime>> {
        let addr = SocketAddr::new(key.vip, key.port);
        let port = match key.protocol {
            Protocol::Tcp => {
                let listener = socket::tcp_listener(addr)?;
                let port = PortRuntime::new(key, svc, config, weights, Arc::clone(&self.metrics));
                tokio::spawn(tcp::serve(
                    Arc::clone(&port),
                    listener,
                    Arc::clone(&self.conns),
                ));
                port
            }
            Protocol::Udp => {
                let sock = socket::udp_socket(addr)?;
                let port = PortRuntime::new(key, svc, config, weights, Arc::clone(&self.metrics));
                tokio::spawn(udp::serve(Arc::clone(&port), sock));
                port
            }
            Protocol::Sctp => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "SCTP is not forwarded",
                ));
            }
        };
        for b in port.backends() {
            tokio::spawn(health::run(Arc::downgrade(&port), b));
        }
        tracing::info!(port = %key, service = %port.service.name, backends = weights.len(), "listening");
        Ok(port)
    }

    /// Stops a port's listener and drains its connections.
    fn retire(&self, port: Arc<PortRuntime>) {
        port.stop.send_replace(true);
        let (_, removed) = port.set_backends(&[]);
        self.drain_later(removed);
    }

    /// Closes connections to `backends` once the drain timeout has passed.
    fn drain_later(&self, backends: Vec<Arc<Backend>>) {
        if backends.is_empty() {
            return;
        }
        for b in &backends {
            tracing::info!(backend = %b.addr, drain = ?self.drain, "backend removed; draining");
        }
        let drain = self.drain;
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            for b in backends {
                b.kill();
            }
        });
    }

    /// Stops accepting everywhere, waits up to the drain timeout for open
    /// connections to finish, then closes the rest.
    pub async fn shutdown(&mut self) {
        for p in self.ports.values() {
            p.stop.send_replace(true);
        }
        let open = self.conns.count();
        tracing::info!(connections = open, drain = ?self.drain, "draining");
        if tokio::time::timeout(self.drain, self.conns.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = self.conns.count(),
                "drain timeout; closing remaining connections"
            );
            for p in self.ports.values() {
                for b in p.backends() {
                    b.kill();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.conns.wait_idle()).await;
        }
        // Kernel flows end here, after the drain: the program goes with the
        // process (a restart that keeps them needs pinned maps, not built yet).
        self.kernel.stop();
    }
}
