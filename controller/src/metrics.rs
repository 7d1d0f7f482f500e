//! Prometheus metrics of the controller, served on `/metrics`.

use crate::core::Core;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Labels of a pool's address counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `total`, `used` or `free`.
    pub state: String,
}

/// Labels of a failure count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why (see docs/kubernetes.md).
    pub reason: String,
}

/// Labels of an API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Every metric of the controller.
pub struct Metrics {
    /// Addresses per pool, family and state (floats: an IPv6 pool can exceed 2^63).
    pub pool_addresses: Family<PoolLabels, Gauge<f64, AtomicU64>>,
    /// Allocations that gave a Service new addresses.
    pub allocations: Counter,
    /// Distinct allocation failures, by reason.
    pub failures: Family<ReasonLabels, Counter>,
    /// Addresses given back (deletion, type change, pool removed).
    pub releases: Counter,
    /// Time to handle one change, from the watch event to the writes done.
    pub reconcile_seconds: Histogram,
    /// 1 while the ConfigMap holds an invalid configuration (the last valid one is in force).
    pub config_stale: Gauge,
    /// 1 while a valid configuration is in force.
    pub config_loaded: Gauge,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// LoadBalancer Services handled.
    pub services: Gauge,
    /// Of those, Services holding addresses.
    pub services_allocated: Gauge,
    /// Status writes, by result.
    pub status_writes: Family<ResultLabels, Counter>,
    /// Writes not sent because this replica could not prove it still leads.
    pub fenced_writes: Counter,
    /// Times this replica stopped leading (deadline passed or another holder).
    pub leadership_lost: Counter,
    /// Events that could not be published (API errors, queue full).
    pub events_dropped: Counter,
    registry: Registry,
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ferrolb_controller");
        let m = Metrics {
            pool_addresses: Family::default(),
            allocations: Counter::default(),
            failures: Family::default(),
            releases: Counter::default(),
            reconcile_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            config_stale: Gauge::default(),
            config_loaded: Gauge::default(),
            leader: Gauge::default(),
            services: Gauge::default(),
            services_allocated: Gauge::default(),
            status_writes: Family::default(),
            fenced_writes: Counter::default(),
            leadership_lost: Counter::default(),
            events_dropped: Counter::default(),
            registry: Registry::default(),
        };
        for reason in crate::core::FAILURE_REASONS {
            let _ = m.failures.get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            });
        }
        registry.register(
            "pool_addresses",
            "Addresses per pool, family and state (total, used, free)",
            m.pool_addresses.clone(),
        );
        registry.register(
            "allocations",
            "Allocations that gave a Service new addresses",
            m.allocations.clone(),
        );
        registry.register(
            "allocation_failures",
            "Distinct allocation failures, by reason",
            m.failures.clone(),
        );
        registry.register(
            "releases",
            "Addresses given back (deletion, type change, pool removed)",
            m.releases.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Time to handle one change, from the watch event to the API writes done",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "config_stale",
            "1 while the ConfigMap is invalid and the last valid configuration is in force",
            m.config_stale.clone(),
        );
        registry.register(
            "config_loaded",
            "1 while a valid configuration is in force",
            m.config_loaded.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        registry.register(
            "services",
            "LoadBalancer Services handled by this controller",
            m.services.clone(),
        );
        registry.register(
            "services_allocated",
            "LoadBalancer Services holding addresses",
            m.services_allocated.clone(),
        );
        registry.register(
            "status_writes",
            "Service status writes, by result",
            m.status_writes.clone(),
        );
        registry.register(
            "fenced_writes",
            "Status writes not sent because this replica could not prove it still held the Lease",
            m.fenced_writes.clone(),
        );
        registry.register(
            "leadership_lost",
            "Times this replica stopped leading: its renew deadline passed or another replica holds the Lease",
            m.leadership_lost.clone(),
        );
        registry.register(
            "events_dropped",
            "Events that could not be published",
            m.events_dropped.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Sets the gauges that mirror the controller's state.
    pub fn observe(&self, core: &Core) {
        self.config_stale.set(i64::from(core.config_stale()));
        self.config_loaded.set(i64::from(core.config().is_some()));
        let (handled, allocated) = core.service_counts();
        self.services.set(handled as i64);
        self.services_allocated.set(allocated as i64);
        self.pool_addresses.clear();
        for s in core.allocator().stats() {
            for (family, f) in [("ipv4", s.v4), ("ipv6", s.v6)] {
                if f.total == 0 {
                    continue;
                }
                for (state, v) in [("total", f.total), ("used", f.used), ("free", f.free)] {
                    self.pool_addresses
                        .get_or_create(&PoolLabels {
                            pool: s.name.clone(),
                            family: family.to_string(),
                            state: state.to_string(),
                        })
                        .set(v as f64);
                }
            }
        }
    }
}
