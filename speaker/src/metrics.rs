//! Prometheus metrics of the speaker, served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of a forwarded port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// Service name.
    pub service: String,
    /// `PORT/PROTOCOL`, e.g. `80/TCP`.
    pub port: String,
}

/// Labels of one backend of a port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// Service name.
    pub service: String,
    /// `PORT/PROTOCOL`.
    pub port: String,
    /// Backend `IP:port`.
    pub backend: String,
}

/// Labels of the mode a port is served in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    /// Service name.
    pub service: String,
    /// `PORT/PROTOCOL`.
    pub port: String,
    /// `kernel` or `userspace`.
    pub mode: String,
}

/// Labels of a rejected connection or packet.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Service name.
    pub service: String,
    /// `PORT/PROTOCOL`.
    pub port: String,
    /// `source_range`, `limit`, `no_backend` or `connect_failed`.
    pub reason: String,
}

/// Labels of a VIP this node announces.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnouncedLabels {
    /// Service (`namespace/name` in Kubernetes).
    pub service: String,
    /// The address.
    pub vip: String,
    /// `l2` (this node owns it) or `bgp` (this node advertises it).
    pub mode: String,
}

/// Labels of a service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// Service name.
    pub service: String,
}

/// Labels of a config reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a byte counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// Service name.
    pub service: String,
    /// `PORT/PROTOCOL`.
    pub port: String,
    /// `in` (client to backend) or `out` (backend to client).
    pub direction: String,
}

/// Labels of a bounded queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `l2_conflicts`, `bgp_inbox`, `bgp_candidates`, `bfd`.
    pub queue: String,
}

/// Labels of a refused heartbeat.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `bad_mac`, `replay`, `wrong_source`, ... (`ferrolb_l2::auth::Refusal::reason`).
    pub reason: String,
}

/// Labels of an interface.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IfaceLabels {
    /// Interface name.
    pub interface: String,
}

/// Labels of a VIP.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabels {
    /// The address.
    pub vip: String,
}

/// Labels of a BGP peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// Peer name.
    pub peer: String,
}

/// Labels of a BGP peer and a direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirectionLabels {
    /// Peer name.
    pub peer: String,
    /// `sent` or `received`.
    pub direction: String,
}

fn check_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// Every metric the speaker exports.
pub struct Metrics {
    registry: Registry,
    /// Connections forwarded, per backend.
    pub connections: Family<BackendLabels, Counter>,
    /// Open connections per port.
    pub active: Family<PortLabels, Gauge>,
    /// Bytes forwarded per port and direction.
    pub bytes: Family<DirectionLabels, Counter>,
    /// 1 if the backend takes new connections, 0 if it is down.
    pub backend_up: Family<BackendLabels, Gauge>,
    /// Connects to a backend that failed (passive health).
    pub connect_failures: Family<BackendLabels, Counter>,
    /// Health check duration.
    pub check_seconds: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// Connections or packets refused, by reason.
    pub rejected: Family<RejectLabels, Counter>,
    /// 1 if some backend of the service is up.
    pub service_up: Family<ServiceLabels, Gauge>,
    /// UDP flows per port.
    pub udp_flows: Family<PortLabels, Gauge>,
    /// UDP flows evicted because the table was full.
    pub udp_evicted: Family<PortLabels, Counter>,
    /// UDP datagrams forwarded per port and direction.
    pub udp_packets: Family<DirectionLabels, Counter>,
    /// Configuration reloads by result.
    pub config_reloads: Family<ResultLabels, Counter>,
    /// Writes of this node's NodeAnnouncement (Kubernetes mode) by result.
    pub announcement_writes: Family<ResultLabels, Counter>,
    /// Role Events (announced, withdrawn) held back by the per-Service budget.
    pub events_held_back: Counter,
    /// ARP requests and neighbour solicitations received for owned VIPs.
    pub l2_requests: Family<IfaceLabels, Counter>,
    /// Answers sent.
    pub l2_answers: Family<IfaceLabels, Counter>,
    /// Gratuitous ARP and unsolicited NA frames sent.
    pub l2_gratuitous: Family<IfaceLabels, Counter>,
    /// Frames dropped as malformed.
    pub l2_malformed: Family<IfaceLabels, Counter>,
    /// Answers not sent because their asker exceeded its per-source rate.
    pub l2_limited: Family<IfaceLabels, Counter>,
    /// Another MAC seen answering or announcing an owned VIP.
    pub l2_duplicates: Family<VipLabels, Counter>,
    /// Datagrams on the membership port not taken as heartbeats, by reason.
    pub l2_heartbeats_refused: Family<RefusalLabels, Counter>,
    /// Items a full queue fed by the network could not take, by queue.
    pub queue_dropped: Family<QueueLabels, Counter>,
    /// Services taken or given up by this node.
    pub l2_ownership_changes: Counter,
    /// Virtual-MAC links this node holds now.
    pub l2_virtual_macs: Gauge,
    /// Members this node took down on their monitors' verdicts (fast profile).
    pub l2_fast_detections: Counter,
    /// Virtual-MAC links that could not be made (the group answered with the node MAC).
    pub l2_virtual_mac_fallbacks: Counter,
    /// From a member declared down to this node's first announcement.
    pub l2_failover_seconds: Histogram,
    /// 1 while the BGP session is established.
    pub bgp_session_up: Family<PeerLabels, Gauge>,
    /// Prefixes advertised to the peer.
    pub bgp_prefixes: Family<PeerLabels, Gauge>,
    /// UPDATE messages by direction.
    pub bgp_updates: Family<PeerDirectionLabels, Counter>,
    /// NOTIFICATION messages by direction.
    pub bgp_notifications: Family<PeerDirectionLabels, Counter>,
    /// Malformed UPDATEs whose routes were treated as withdrawn (RFC 7606).
    pub bgp_treat_as_withdraw: Family<PeerLabels, Counter>,
    /// Unix time of the session's last transition to or from Established.
    pub bgp_last_change: Family<PeerLabels, Gauge>,
    /// 1 while the BFD session with the peer is up.
    pub bfd_session_up: Family<PeerLabels, Gauge>,
    /// BFD sessions that went from up to down (a path failure detected).
    pub bfd_down: Family<PeerLabels, Counter>,
    /// 1 for each VIP this node announces now (Kubernetes mode), by mode.
    pub vip_announced: Family<AnnouncedLabels, Gauge>,
    /// Unix time this node began announcing each VIP it announces now.
    pub vip_announced_since: Family<AnnouncedLabels, Gauge>,
    /// 1 for the mode each forwarded port is served in now.
    pub forwarder_mode: Family<ModeLabels, Gauge>,
    /// 1 while the kernel data path is loaded and attached.
    pub kernel_active: Gauge,
    /// 1 while its maps and links are pinned (a restart adopts them).
    pub kernel_pinned: Gauge,
    /// Times kernel-mode ports went to user space: the program could not
    /// load, attach or be written.
    pub kernel_fallbacks: Counter,
    /// Packets the kernel data path forwarded, per port.
    pub kernel_packets: Family<PortLabels, Counter>,
    /// Bytes the kernel data path forwarded, per port.
    pub kernel_bytes: Family<PortLabels, Counter>,
    /// New flows the kernel data path balanced, per port.
    pub kernel_flows: Family<PortLabels, Counter>,
    /// Packets the kernel data path dropped (no backend up, source range,
    /// no NAT port), per port.
    pub kernel_dropped: Family<PortLabels, Counter>,
    /// Packets the kernel data path sent to a backend.
    pub kernel_backend_packets: Family<BackendLabels, Counter>,
    /// Bytes the kernel data path sent to a backend.
    pub kernel_backend_bytes: Family<BackendLabels, Counter>,
    /// New flows the kernel data path gave a backend.
    pub kernel_backend_flows: Family<BackendLabels, Counter>,
}

impl Metrics {
    /// Counts a configuration change taken (`ok`) or refused.
    pub fn reloaded(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts an item a full queue had to drop.
    pub fn dropped(&self, queue: &str) {
        self.queue_dropped
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .inc();
    }

    /// A registry with every family registered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ferrolb");
        let m = Metrics {
            connections: Family::default(),
            active: Family::default(),
            bytes: Family::default(),
            backend_up: Family::default(),
            connect_failures: Family::default(),
            check_seconds: Family::new_with_constructor(check_buckets as fn() -> Histogram),
            rejected: Family::default(),
            service_up: Family::default(),
            udp_flows: Family::default(),
            udp_evicted: Family::default(),
            udp_packets: Family::default(),
            config_reloads: Family::default(),
            announcement_writes: Family::default(),
            events_held_back: Counter::default(),
            l2_requests: Family::default(),
            l2_answers: Family::default(),
            l2_gratuitous: Family::default(),
            l2_malformed: Family::default(),
            l2_limited: Family::default(),
            l2_duplicates: Family::default(),
            l2_heartbeats_refused: Family::default(),
            queue_dropped: Family::default(),
            l2_ownership_changes: Counter::default(),
            l2_virtual_macs: Gauge::default(),
            l2_fast_detections: Counter::default(),
            l2_virtual_mac_fallbacks: Counter::default(),
            l2_failover_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            bgp_session_up: Family::default(),
            bgp_prefixes: Family::default(),
            bgp_updates: Family::default(),
            bgp_notifications: Family::default(),
            bgp_treat_as_withdraw: Family::default(),
            bgp_last_change: Family::default(),
            bfd_session_up: Family::default(),
            bfd_down: Family::default(),
            vip_announced: Family::default(),
            vip_announced_since: Family::default(),
            forwarder_mode: Family::default(),
            kernel_active: Gauge::default(),
            kernel_pinned: Gauge::default(),
            kernel_fallbacks: Counter::default(),
            kernel_packets: Family::default(),
            kernel_bytes: Family::default(),
            kernel_flows: Family::default(),
            kernel_dropped: Family::default(),
            kernel_backend_packets: Family::default(),
            kernel_backend_bytes: Family::default(),
            kernel_backend_flows: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Connections forwarded to a backend",
            m.connections.clone(),
        );
        registry.register(
            "forwarder_mode",
            "1 for the mode (kernel or userspace) each forwarded port is served in",
            m.forwarder_mode.clone(),
        );
        registry.register(
            "kernel_datapath_active",
            "1 while the kernel data path is loaded and attached",
            m.kernel_active.clone(),
        );
        registry.register(
            "kernel_datapath_pinned",
            "1 while the kernel data path's maps and links are pinned in a bpffs, so a restarted speaker adopts them with their flows",
            m.kernel_pinned.clone(),
        );
        registry.register(
            "kernel_datapath_fallbacks",
            "Times kernel-mode ports went to user space because the program could not load, attach or be written",
            m.kernel_fallbacks.clone(),
        );
        registry.register(
            "kernel_packets",
            "Packets the kernel data path forwarded, per port",
            m.kernel_packets.clone(),
        );
        registry.register(
            "kernel_bytes",
            "Bytes the kernel data path forwarded, per port",
            m.kernel_bytes.clone(),
        );
        registry.register(
            "kernel_flows",
            "New flows the kernel data path balanced, per port",
            m.kernel_flows.clone(),
        );
        registry.register(
            "kernel_dropped",
            "Packets the kernel data path dropped (no backend up, source range refused, no NAT port), per port",
            m.kernel_dropped.clone(),
        );
        registry.register(
            "kernel_backend_packets",
            "Packets the kernel data path sent to a backend",
            m.kernel_backend_packets.clone(),
        );
        registry.register(
            "kernel_backend_bytes",
            "Bytes the kernel data path sent to a backend",
            m.kernel_backend_bytes.clone(),
        );
        registry.register(
            "kernel_backend_flows",
            "New flows the kernel data path gave a backend",
            m.kernel_backend_flows.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections per port",
            m.active.clone(),
        );
        registry.register(
            "bytes",
            "Bytes forwarded (in: client to backend, out: backend to client)",
            m.bytes.clone(),
        );
        registry.register(
            "backend_up",
            "1 if the backend takes new connections",
            m.backend_up.clone(),
        );
        registry.register(
            "backend_connect_failures",
            "Failed connects to a backend",
            m.connect_failures.clone(),
        );
        registry.register(
            "health_check_duration_seconds",
            "Active health check duration",
            m.check_seconds.clone(),
        );
        registry.register(
            "rejected",
            "Connections or datagrams refused, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "service_up",
            "1 if some backend of the service takes connections",
            m.service_up.clone(),
        );
        registry.register(
            "udp_flows",
            "UDP flows tracked per port",
            m.udp_flows.clone(),
        );
        registry.register(
            "udp_flows_evicted",
            "UDP flows evicted because the flow table was full",
            m.udp_evicted.clone(),
        );
        registry.register(
            "udp_datagrams",
            "UDP datagrams forwarded",
            m.udp_packets.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "events_held_back",
            "Role Events (IPAnnounced, IPWithdrawn) a flapping Service did not get: after 5, one per 30 s per Service",
            m.events_held_back.clone(),
        );
        registry.register(
            "node_announcement_writes",
            "Writes of this node's NodeAnnouncement (what status --api shows) by result",
            m.announcement_writes.clone(),
        );
        registry.register(
            "l2_requests",
            "ARP requests and neighbor solicitations for a VIP this node serves",
            m.l2_requests.clone(),
        );
        registry.register(
            "l2_answers",
            "ARP replies and neighbor advertisements sent in answer",
            m.l2_answers.clone(),
        );
        registry.register(
            "l2_gratuitous",
            "Gratuitous ARP and unsolicited neighbor advertisements sent",
            m.l2_gratuitous.clone(),
        );
        registry.register(
            "l2_malformed_frames",
            "Frames on the packet socket that failed to parse",
            m.l2_malformed.clone(),
        );
        registry.register(
            "l2_answers_limited",
            "Answers not sent because the asking MAC exceeded its rate (a flood)",
            m.l2_limited.clone(),
        );
        registry.register(
            "l2_duplicate_responders",
            "Another host answered for a VIP this node owns",
            m.l2_duplicates.clone(),
        );
        registry.register(
            "queue_dropped",
            "Items dropped because a bounded queue fed by the network was full, by queue",
            m.queue_dropped.clone(),
        );
        registry.register(
            "l2_heartbeats_refused",
            "Datagrams on the membership port refused (forged, replayed, unsigned, from the wrong address), by reason",
            m.l2_heartbeats_refused.clone(),
        );
        registry.register(
            "l2_ownership_changes",
            "Services this node took or gave up",
            m.l2_ownership_changes.clone(),
        );
        registry.register(
            "l2_fast_detections",
            "Members this node declared down on their monitors' verdicts (failover profile fast), not after the slow silence",
            m.l2_fast_detections.clone(),
        );
        registry.register(
            "l2_virtual_macs",
            "Virtual-MAC links (one per owned VIP group with virtualMac, per interface) this node holds",
            m.l2_virtual_macs.clone(),
        );
        registry.register(
            "l2_virtual_mac_fallbacks",
            "Virtual-MAC links that could not be made, so the group answered with the node MAC",
            m.l2_virtual_mac_fallbacks.clone(),
        );
        registry.register(
            "l2_failover_seconds",
            "From a member declared down to this node's first announcement",
            m.l2_failover_seconds.clone(),
        );
        registry.register(
            "bgp_session_up",
            "1 while the BGP session is established",
            m.bgp_session_up.clone(),
        );
        registry.register(
            "bgp_prefixes_advertised",
            "Prefixes advertised to the peer",
            m.bgp_prefixes.clone(),
        );
        registry.register(
            "bgp_updates",
            "BGP UPDATE messages by direction",
            m.bgp_updates.clone(),
        );
        registry.register(
            "bgp_notifications",
            "BGP NOTIFICATION messages by direction",
            m.bgp_notifications.clone(),
        );
        registry.register(
            "bgp_updates_treated_as_withdraw",
            "Malformed UPDATEs from a peer whose routes were treated as withdrawn, session kept (RFC 7606)",
            m.bgp_treat_as_withdraw.clone(),
        );
        registry.register(
            "bgp_session_last_change_timestamp_seconds",
            "Unix time of the session's last transition to or from Established",
            m.bgp_last_change.clone(),
        );
        registry.register(
            "bfd_session_up",
            "1 while the BFD session with the peer is up",
            m.bfd_session_up.clone(),
        );
        registry.register(
            "bfd_down",
            "BFD sessions that went from up to down",
            m.bfd_down.clone(),
        );
        registry.register(
            "vip_announced",
            "1 for each VIP this node announces (Kubernetes mode): mode l2 when it owns it, bgp when it advertises it",
            m.vip_announced.clone(),
        );
        registry.register(
            "vip_announced_since_timestamp_seconds",
            "Unix time this node began announcing the VIP (Kubernetes mode), for as long as it does",
            m.vip_announced_since.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Metric names as exposed (`# TYPE` lines), without a counter's `_total`.
    fn exposed() -> BTreeSet<String> {
        // Families without a series are not exposed at all; give each one.
        let m = Metrics::new();
        let port = PortLabels {
            service: "s".into(),
            port: "80".into(),
        };
        let backend = BackendLabels {
            service: "s".into(),
            port: "80".into(),
            backend: "b".into(),
        };
        let dir = DirectionLabels {
            service: "s".into(),
            port: "80".into(),
            direction: "in".into(),
        };
        let iface = IfaceLabels {
            interface: "eth0".into(),
        };
        let peer = PeerLabels { peer: "p".into() };
        let peer_dir = PeerDirectionLabels {
            peer: "p".into(),
            direction: "sent".into(),
        };
        m.connections.get_or_create(&backend).inc();
        m.forwarder_mode
            .get_or_create(&ModeLabels {
                service: "s".into(),
                port: "80/TCP".into(),
                mode: "kernel".into(),
            })
            .set(1);
        m.kernel_active.set(1);
        m.kernel_pinned.set(1);
        m.kernel_fallbacks.inc();
        m.kernel_packets.get_or_create(&port).inc();
        m.kernel_bytes.get_or_create(&port).inc();
        m.kernel_flows.get_or_create(&port).inc();
        m.kernel_dropped.get_or_create(&port).inc();
        m.kernel_backend_packets.get_or_create(&backend).inc();
        m.kernel_backend_bytes.get_or_create(&backend).inc();
        m.kernel_backend_flows.get_or_create(&backend).inc();
        m.active.get_or_create(&port).set(1);
        m.bytes.get_or_create(&dir).inc();
        m.backend_up.get_or_create(&backend).set(1);
        m.connect_failures.get_or_create(&backend).inc();
        m.check_seconds.get_or_create(&backend).observe(0.1);
        m.rejected
            .get_or_create(&RejectLabels {
                service: "s".into(),
                port: "80".into(),
                reason: "limit".into(),
            })
            .inc();
        m.service_up
            .get_or_create(&ServiceLabels {
                service: "s".into(),
            })
            .set(1);
        m.udp_flows.get_or_create(&port).set(1);
        m.udp_evicted.get_or_create(&port).inc();
        m.udp_packets.get_or_create(&dir).inc();
        m.config_reloads
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
        m.announcement_writes
            .get_or_create(&ResultLabels {
                result: "ok".into(),
            })
            .inc();
        m.events_held_back.inc();
        m.l2_requests.get_or_create(&iface).inc();
        m.l2_answers.get_or_create(&iface).inc();
        m.l2_gratuitous.get_or_create(&iface).inc();
        m.l2_malformed.get_or_create(&iface).inc();
        m.l2_limited.get_or_create(&iface).inc();
        m.l2_duplicates
            .get_or_create(&VipLabels {
                vip: "192.0.2.1".into(),
            })
            .inc();
        m.l2_heartbeats_refused
            .get_or_create(&RefusalLabels {
                reason: "bad_mac".into(),
            })
            .inc();
        m.queue_dropped
            .get_or_create(&QueueLabels {
                queue: "bfd".into(),
            })
            .inc();
        m.bgp_session_up.get_or_create(&peer).set(1);
        m.bgp_prefixes.get_or_create(&peer).set(1);
        m.bgp_updates.get_or_create(&peer_dir).inc();
        m.bgp_notifications.get_or_create(&peer_dir).inc();
        m.bgp_treat_as_withdraw.get_or_create(&peer).inc();
        m.bgp_last_change.get_or_create(&peer).set(1);
        m.bfd_session_up.get_or_create(&peer).set(1);
        m.bfd_down.get_or_create(&peer).inc();
        m.vip_announced
            .get_or_create(&AnnouncedLabels {
                service: "ns/web".into(),
                vip: "192.0.2.1".into(),
                mode: "l2".into(),
            })
            .set(1);
        m.vip_announced_since
            .get_or_create(&AnnouncedLabels {
                service: "ns/web".into(),
                vip: "192.0.2.1".into(),
                mode: "l2".into(),
            })
            .set(1);
        m.encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Metric names the operator documentation mentions, without `_total`.
    fn documented() -> BTreeSet<String> {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let mut names = BTreeSet::new();
        for file in ["configuration.md", "l2.md", "bgp.md", "kubernetes.md"] {
            let text = std::fs::read_to_string(docs.join(file)).expect("docs readable");
            for chunk in text.split('`').skip(1).step_by(2) {
                if let Some(rest) = chunk.strip_prefix("ferrolb_") {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    let name = name.strip_suffix("_total").unwrap_or(&name).to_string();
                    // The controller's metrics are its own (controller/src/metrics.rs).
                    if !name.starts_with("controller_") {
                        names.insert(format!("ferrolb_{name}"));
                    }
                }
            }
        }
        names
    }

    #[test]
    fn every_documented_metric_is_exposed_and_every_exposed_one_documented() {
        let exposed = exposed();
        let documented = documented();
        let missing: Vec<_> = documented.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "documented but not registered: {missing:?}"
        );
        let undocumented: Vec<_> = exposed.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "registered but not documented: {undocumented:?}"
        );
        assert!(exposed.len() >= 20, "{exposed:?}");
    }
}
