//! The validated configuration. Every value here has passed validation;
//! code that receives a [`Config`] never re-checks it.

use crate::selector::LabelSelector;
use ferrolb_ipset::{AddrSpec, Cidr, Family, IpSet};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A whole ferrolb configuration (Kubernetes ConfigMap or standalone file).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Address pools, in file order.
    pub pools: Vec<Pool>,
    /// Layer 2 advertisements.
    pub l2: Vec<L2Advertisement>,
    /// BGP settings; `None` when the file has no `bgp` section.
    pub bgp: Option<Bgp>,
    /// Standalone mode: the hosts that take part in failover.
    pub members: Vec<Member>,
    /// Standalone mode: the services to expose.
    pub services: Vec<Service>,
    /// Forwarder limits and timeouts.
    pub forwarder: ForwarderSettings,
    /// Layer 2 failure detection and announcement timing.
    pub failover: FailoverSettings,
}

/// Timing of layer 2 failure detection and announcements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverSettings {
    /// Time between heartbeats to each member.
    pub heartbeat_interval: Duration,
    /// Silence after which a member is down (when no other member heard it either).
    pub dead_after: Duration,
    /// Gratuitous ARP / unsolicited NA refresh for owned VIPs; zero disables.
    pub refresh_interval: Duration,
    /// After the announcement at takeover, repeat it at these offsets.
    pub announce_repeats: Vec<Duration>,
    /// The heartbeat keys, one per line (the first signs, all verify);
    /// none: heartbeats go unauthenticated.
    pub key_file: Option<std::path::PathBuf>,
    /// `profile: fast`: monitors ping their ring neighbours every 20 ms and
    /// a member is down 80 ms after its pings stop (docs/l2.md).
    pub fast_detection: bool,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            heartbeat_interval: Duration::from_millis(100),
            dead_after: Duration::from_millis(400),
            refresh_interval: Duration::from_secs(10),
            announce_repeats: [100, 300, 1_000, 2_000].map(Duration::from_millis).to_vec(),
            key_file: None,
            fast_detection: false,
        }
    }
}

/// Limits and timeouts of the L4 forwarder, for every forwarded port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderSettings {
    /// How long a connect to a backend may take before the next one is tried.
    pub connect_timeout: Duration,
    /// A TCP connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long connections to a removed backend, or to any backend at
    /// shutdown, may continue before they are closed.
    pub drain_timeout: Duration,
    /// Concurrent connections per service, unless the service sets its own.
    pub max_connections: u32,
    /// Concurrent connections one client address may hold per service (0:
    /// no limit), so that one host holding slow connections cannot take
    /// every slot of `max_connections`.
    pub max_connections_per_source: u32,
    /// A UDP flow with no packet either way for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// UDP flows kept per port; beyond it the oldest is evicted.
    pub udp_max_flows: u32,
    /// Relay TCP with splice(2) (zero-copy) instead of a user-space copy.
    pub splice: bool,
    /// Where ports forward unless they say otherwise.
    pub mode: ForwardMode,
}

/// Where a port's traffic is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// The tokio proxy: terminates TCP, PROXY protocol, every algorithm.
    #[default]
    Userspace,
    /// The eBPF program on the announcing interfaces (NAT, Maglev); the
    /// user-space listener stays open for what the program does not see
    /// (clients on this host) and takes over if the program cannot load.
    Kernel,
    /// The eBPF program with direct server return: packets reach the
    /// backend encapsulated (IPIP, or IPv6 in IPv6) with the client's
    /// address intact, and the backend (prepared with `ferrolb-speaker
    /// prepare-backend`) replies to the client directly. Backends must
    /// listen on the service's port.
    KernelDsr,
}

impl ForwardMode {
    /// Whether the kernel data path serves the port (either way back).
    pub fn is_kernel(self) -> bool {
        matches!(self, ForwardMode::Kernel | ForwardMode::KernelDsr)
    }
}

impl fmt::Display for ForwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardMode::Userspace => "userspace",
            ForwardMode::Kernel => "kernel",
            ForwardMode::KernelDsr => "kernel-dsr",
        })
    }
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        ForwarderSettings {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_source: 0,
            udp_idle_timeout: Duration::from_secs(30),
            udp_max_flows: 65_536,
            splice: false,
            mode: ForwardMode::Userspace,
        }
    }
}

impl Config {
    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }
}

/// A named set of addresses services get their external IPs from.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// The entries as written (kept for display).
    pub specs: Vec<AddrSpec>,
    /// The addresses, merged into sorted intervals.
    pub addresses: IpSet,
    /// Whether services that name no pool may get addresses from it.
    pub auto_assign: bool,
    /// Whether IPv4 addresses ending in .0 or .255 are never handed out.
    pub avoid_buggy_ips: bool,
    /// Lower is preferred; pools without a priority come after all that have one.
    pub priority: Option<u32>,
    /// Namespaces allowed to use the pool; empty means all (unless
    /// `namespace_selector` is set).
    pub namespaces: Vec<String>,
    /// Namespaces, by their labels, allowed to use the pool besides those
    /// named in `namespaces` (MetalLB's `namespaceSelectors`); `None` adds
    /// none.
    pub namespace_selector: Option<LabelSelector>,
    /// Services whose labels must match; `None` means all.
    pub service_selector: Option<LabelSelector>,
}

impl Pool {
    /// The number of addresses the allocator may hand out for `family`
    /// (buggy addresses excluded when `avoid_buggy_ips` is set).
    pub fn usable(&self, family: Family) -> u128 {
        let total = self.addresses.count(family);
        if self.avoid_buggy_ips && family == Family::V4 {
            let buggy: u128 = self
                .addresses
                .intervals(Family::V4)
                .iter()
                .map(|iv| ferrolb_ipset::buggy_count(iv.start(), iv.end()))
                .sum();
            total - buggy
        } else {
            total
        }
    }

    /// The longest prefix among the CIDRs that cover the pool's `family`
    /// addresses, i.e. the shortest aggregation length that never
    /// announces addresses outside the pool.
    pub fn longest_prefix(&self, family: Family) -> Option<u8> {
        self.addresses
            .intervals(family)
            .iter()
            .flat_map(|iv| iv.to_cidrs())
            .map(|c| c.prefix())
            .max()
    }
}

/// Which pools are announced over layer 2 (ARP/NDP), from which nodes and interfaces.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L2Advertisement {
    /// Pools announced; empty means every pool.
    pub pools: Vec<String>,
    /// Interfaces to answer on; empty means every suitable interface.
    pub interfaces: Vec<String>,
    /// Name patterns (`*`: any run of characters) of interfaces never
    /// chosen when `interfaces` is empty: by default
    /// [`DEFAULT_EXCLUDED_INTERFACES`], the container network's bridges,
    /// veths and tunnels.
    pub exclude_interfaces: Vec<String>,
    /// Nodes allowed to announce; `None` means all.
    pub node_selector: Option<LabelSelector>,
    /// Services announced, by their labels (MetalLB's `serviceSelectors`);
    /// `None` means every service of the pools.
    pub service_selector: Option<LabelSelector>,
    /// Answer with a MAC that belongs to the VIP group, not the node, so a
    /// failover needs no client to update its neighbour cache (docs/l2.md).
    pub virtual_mac: bool,
}

/// Interfaces a layer 2 entry without `interfaces` never answers on: the
/// bridges, veths, tunnels and dummies container networks make (Docker,
/// CNI bridge, Calico, Flannel, Cilium, Weave, kube-proxy's IPVS dummy,
/// node-local DNS), as MetalLB's `metallb-excludel2` list. ARP answered on
/// them would tell pods or tunnels that the node holds the VIP.
pub const DEFAULT_EXCLUDED_INTERFACES: [&str; 18] = [
    "docker*",
    "cbr*",
    "cni*",
    "virbr*",
    "lxcbr*",
    "lxc*",
    "veth*",
    "cali*",
    "tunl*",
    "flannel*",
    "cilium*",
    "vxlan*",
    "genev*",
    "weave*",
    "kube-ipvs*",
    "kube-bridge",
    "nodelocaldns*",
    "dummy*",
];

/// BGP settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bgp {
    /// The router ID; derived from the node's addresses when absent.
    pub router_id: Option<Ipv4Addr>,
    /// Routers to peer with.
    pub peers: Vec<Peer>,
    /// What to announce to them.
    pub advertisements: Vec<BgpAdvertisement>,
}

/// Where a peer's TCP-MD5 password comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PeerPassword {
    /// Written in the config.
    Inline(String),
    /// Read from a file at start-up (a mounted Secret, for instance).
    File(PathBuf),
    /// Key `key` of Secret `name` in the speaker's namespace, read from the
    /// Kubernetes API when the speaker starts announcing (Kubernetes mode only).
    Secret {
        /// The Secret.
        name: String,
        /// Its data key (`password`, as in a `kubernetes.io/basic-auth` Secret).
        key: String,
        /// The namespace written (MetalLB's spelling); it must be the speaker's.
        namespace: Option<String>,
    },
}

impl fmt::Debug for PeerPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret, even in debug output.
        match self {
            PeerPassword::Inline(_) => f.write_str("Inline(<redacted>)"),
            PeerPassword::File(p) => write!(f, "File({p:?})"),
            PeerPassword::Secret { name, key, .. } => write!(f, "Secret({name:?}, key {key:?})"),
        }
    }
}

/// A BGP neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// Unique name, referenced by advertisements.
    pub name: String,
    /// The router's address.
    pub address: IpAddr,
    /// The router's AS number.
    pub asn: u32,
    /// Our AS number.
    pub my_asn: u32,
    /// The router's TCP port.
    pub port: u16,
    /// Proposed hold time (0 disables keepalives; otherwise at least 3 s).
    pub hold_time: Duration,
    /// Interval between KEEPALIVEs.
    pub keepalive_time: Duration,
    /// TCP-MD5 password, if any.
    pub password: Option<PeerPassword>,
    /// TTL for eBGP peers that are not directly connected.
    pub ebgp_multihop: Option<u8>,
    /// Wait for the router to connect (port 179) instead of connecting out.
    pub passive: bool,
    /// Local address to connect from.
    pub source_address: Option<IpAddr>,
    /// Next hop of IPv4 routes; default: the session's local address on an
    /// IPv4 session, else the node's first global IPv4 address on the
    /// session's interface.
    pub next_hop_v4: Option<std::net::Ipv4Addr>,
    /// Next hop of IPv6 routes; default: the session's local address on an
    /// IPv6 session, else the node's first global IPv6 address on the
    /// session's interface.
    pub next_hop_v6: Option<std::net::Ipv6Addr>,
    /// Graceful restart settings.
    pub graceful_restart: GracefulRestart,
    /// BFD settings; `None` means no BFD.
    pub bfd: Option<Bfd>,
    /// Nodes that peer with this router; `None` means all.
    pub node_selector: Option<LabelSelector>,
    /// This session's BGP identifier, instead of `bgp.routerId` (MetalLB's
    /// per-peer `routerID`).
    pub router_id: Option<std::net::Ipv4Addr>,
}

impl Peer {
    /// Whether the session is external (different AS).
    pub fn is_ebgp(&self) -> bool {
        self.asn != self.my_asn
    }
}

/// Graceful restart (RFC 4724) settings of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Whether the capability is advertised.
    pub enabled: bool,
    /// How long the router should keep our routes while we restart.
    pub restart_time: Duration,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        GracefulRestart {
            enabled: true,
            restart_time: Duration::from_secs(120),
        }
    }
}

/// BFD (RFC 5880) settings of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bfd {
    /// Desired minimum receive interval.
    pub receive_interval: Duration,
    /// Desired minimum transmit interval.
    pub transmit_interval: Duration,
    /// Missed packets before the path is declared down.
    pub detect_multiplier: u8,
    /// Wait for the router's first BFD packet before sending (RFC 5880
    /// passive role; MetalLB's `passiveMode`).
    pub passive: bool,
}

impl Default for Bfd {
    fn default() -> Self {
        Bfd {
            receive_interval: Duration::from_millis(300),
            transmit_interval: Duration::from_millis(300),
            detect_multiplier: 3,
            passive: false,
        }
    }
}

/// A standard BGP community (RFC 1997), stored as its 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Community(pub u32);

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

/// A large BGP community (RFC 8092).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

/// What to announce over BGP, and to whom.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpAdvertisement {
    /// Pools announced; empty means every pool.
    pub pools: Vec<String>,
    /// Prefix length of IPv4 announcements.
    pub aggregation_length: u8,
    /// Prefix length of IPv6 announcements.
    pub aggregation_length_v6: u8,
    /// LOCAL_PREF attribute (iBGP only).
    pub local_pref: Option<u32>,
    /// Standard communities attached.
    pub communities: Vec<Community>,
    /// Large communities attached.
    pub large_communities: Vec<LargeCommunity>,
    /// Peers to announce to; empty means all.
    pub peers: Vec<String>,
    /// Nodes that advertise with it; `None` means every node that peers.
    pub node_selector: Option<LabelSelector>,
    /// Services advertised, by their labels (MetalLB's `serviceSelectors`);
    /// `None` means every service of the pools.
    pub service_selector: Option<LabelSelector>,
}

impl BgpAdvertisement {
    /// Whether this advertisement covers a service of `pool` labelled `labels`.
    pub fn covers(&self, pool: &str, labels: &BTreeMap<String, String>) -> bool {
        covers(&self.pools, self.service_selector.as_ref(), pool, labels)
    }
}

impl L2Advertisement {
    /// Whether this entry covers a service of `pool` labelled `labels`.
    pub fn covers(&self, pool: &str, labels: &BTreeMap<String, String>) -> bool {
        covers(&self.pools, self.service_selector.as_ref(), pool, labels)
    }
}

/// An advertisement's rule for both modes: its pools (none: every pool)
/// and its service selector (none: every service).
fn covers(
    pools: &[String],
    selector: Option<&LabelSelector>,
    pool: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    (pools.is_empty() || pools.iter().any(|p| p == pool))
        && selector.is_none_or(|s| s.matches(labels))
}

impl Default for BgpAdvertisement {
    /// Every pool to every peer as /32 and /128, no attributes: what is
    /// announced when the configuration lists no advertisements.
    fn default() -> Self {
        BgpAdvertisement {
            pools: Vec::new(),
            aggregation_length: 32,
            aggregation_length_v6: 128,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
            peers: Vec::new(),
            node_selector: None,
            service_selector: None,
        }
    }
}

/// A host taking part in standalone failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name (the `--node` the host runs with).
    pub name: String,
    /// Where its failure detector listens.
    pub address: SocketAddr,
    /// Labels matched by node selectors.
    pub labels: BTreeMap<String, String>,
}

/// The default UDP port of the membership protocol: 7947, next to but not
/// on MetalLB's memberlist port (7946), so both can run on a node while a
/// cluster moves from one to the other.
pub const DEFAULT_MEMBER_PORT: u16 = 7947;

/// A standalone service: a VIP and what to forward from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// A requested address.
    pub ip: Option<IpAddr>,
    /// The pool to allocate from.
    pub pool: Option<String>,
    /// Client networks allowed; empty means everyone.
    pub source_ranges: Vec<Cidr>,
    /// Forwarded ports; empty means the VIP is only announced.
    pub ports: Vec<ServicePort>,
    /// Concurrent connections across the service's ports; `None` means the
    /// forwarder default.
    pub max_connections: Option<u32>,
    /// Labels matched by the pools' and advertisements' `serviceSelector`
    /// (a Kubernetes Service's own labels).
    pub labels: BTreeMap<String, String>,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (Kubernetes only; ferrolb announces but does not forward it).
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// How a port's backends are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest active connections (weighted).
    LeastConnections,
    /// Maglev consistent hashing on the client address.
    Maglev,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::RoundRobin => "roundRobin",
            Algorithm::LeastConnections => "leastConnections",
            Algorithm::Maglev => "maglev",
        })
    }
}

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Text form.
    V1,
    /// Binary form.
    V2,
}

/// One backend of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share of new connections; 0 drains the backend.
    pub weight: u32,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET of `path`, accepting a status in `[min_status, max_status]`.
    Http {
        /// Request path.
        path: String,
        /// Lowest accepted status.
        min_status: u16,
        /// Highest accepted status.
        max_status: u16,
    },
}

/// Active health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe.
    pub kind: CheckKind,
    /// Time between probes.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
    /// Consecutive successes to mark a backend up.
    pub rise: u32,
    /// Consecutive failures to mark a backend down.
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        // Down within about a second of a backend dying (fall x interval + timeout).
        HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(250),
            rise: 2,
            fall: 2,
        }
    }
}

/// A forwarded port of a standalone service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePort {
    /// The port on the VIP.
    pub port: u16,
    /// Its protocol (TCP or UDP).
    pub protocol: Protocol,
    /// Where traffic goes.
    pub backends: Vec<Backend>,
    /// How backends are chosen.
    pub algorithm: Algorithm,
    /// PROXY protocol header sent to backends, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Active health checks; `None` disables them.
    pub health_check: Option<HealthCheck>,
    /// Where it is forwarded; `None`: the `forwarder.mode` default.
    pub mode: Option<ForwardMode>,
}

impl ServicePort {
    /// Where this port is forwarded under the `default` mode: its own mode,
    /// else the default, except that a port sending PROXY headers always
    /// stays in user space (the kernel path does not terminate TCP).
    pub fn effective_mode(&self, default: ForwardMode) -> ForwardMode {
        match (self.mode, self.proxy_protocol) {
            (Some(m), _) => m,
            (None, Some(_)) => ForwardMode::Userspace,
            (None, None) => default,
        }
    }
}
