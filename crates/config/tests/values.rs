//! The typed values a good file produces: defaults, normalisation, units.

use ferrolb_config::*;
use ferrolb_ipset::Family;
use std::time::Duration;

fn full() -> Config {
    let text = include_str!("fixtures/good/full.yaml");
    Config::from_yaml(text).unwrap()
}

#[test]
fn pools_are_normalised_and_counted() {
    let c = full();
    let prod = c.pool("prod").unwrap();
    let v4: Vec<String> = prod
        .addresses
        .intervals(Family::V4)
        .iter()
        .map(|i| i.to_string())
        .collect();
    assert_eq!(v4, ["192.0.2.0-192.0.2.127", "192.0.2.200-192.0.2.220"]);
    assert_eq!(prod.addresses.count(Family::V4), 128 + 21);
    // avoidBuggyIPs removes 192.0.2.0 (and no .255 is in the pool).
    assert_eq!(prod.usable(Family::V4), 128 + 21 - 1);
    assert_eq!(prod.usable(Family::V6), 1u128 << 64);
    assert_eq!(prod.priority, Some(10));
    assert_eq!(prod.namespaces, ["team-a", "team-b"]);
    let lab = c.pool("lab").unwrap();
    assert!(!lab.auto_assign && !lab.avoid_buggy_ips && lab.priority.is_none());
}

#[test]
fn l2_virtual_mac_is_read_and_off_by_default() {
    let c = full();
    assert!(c.l2[0].virtual_mac);
    let plain =
        Config::from_yaml("pools: [{name: p, addresses: [192.0.2.1]}]\nl2: [{pools: [p]}]\n")
            .unwrap();
    assert!(!plain.l2[0].virtual_mac);
}

#[test]
fn bgp_values_and_defaults() {
    let c = full();
    let bgp = c.bgp.unwrap();
    assert_eq!(bgp.router_id, Some("10.255.0.1".parse().unwrap()));
    let tor1 = &bgp.peers[0];
    assert_eq!(
        (tor1.asn, tor1.my_asn, tor1.port),
        (4_200_000_001, 64512, 1179)
    );
    assert_eq!(tor1.hold_time, Duration::from_secs(9));
    assert_eq!(tor1.keepalive_time, Duration::from_secs(3));
    assert_eq!(tor1.password, Some(PeerPassword::Inline("s3cret".into())));
    assert_eq!(format!("{:?}", tor1.password), "Some(Inline(<redacted>))");
    assert_eq!(tor1.ebgp_multihop, Some(2));
    assert_eq!(tor1.graceful_restart.restart_time, Duration::from_secs(60));
    assert_eq!(
        tor1.bfd.unwrap().receive_interval,
        Duration::from_millis(100)
    );
    assert!(tor1.is_ebgp());
    let tor2 = &bgp.peers[1];
    assert_eq!(tor2.port, 179);
    assert!(tor2.hold_time.is_zero() && tor2.keepalive_time.is_zero());
    assert!(tor2.bfd.is_none() && tor2.graceful_restart.enabled);
    let ad = &bgp.advertisements[0];
    assert_eq!(
        ad.communities,
        [Community(65000 << 16 | 100), Community(0xFFFF_FF01)]
    );
    assert_eq!(ad.large_communities, [LargeCommunity(4_200_000_001, 1, 2)]);
    assert_eq!(ad.local_pref, Some(200));
}

#[test]
fn peer_defaults() {
    let c = Config::from_yaml("bgp: {peers: [{name: r, address: 192.0.2.1, asn: 1, myAsn: 2}]}")
        .unwrap();
    let p = &c.bgp.unwrap().peers[0];
    assert_eq!(p.hold_time, Duration::from_secs(90));
    assert_eq!(p.keepalive_time, Duration::from_secs(30));
    assert_eq!(p.port, 179);
    assert!(p.password.is_none() && p.bfd.is_none() && p.node_selector.is_none());
}

#[test]
fn service_values_and_defaults() {
    let c = full();
    let web = &c.services[0];
    assert_eq!(web.ip, Some("192.0.2.10".parse().unwrap()));
    let p = &web.ports[0];
    assert_eq!(p.algorithm, Algorithm::LeastConnections);
    assert_eq!(p.proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(p.backends[1].weight, 3);
    assert_eq!(p.backends[1].address, "[2001:db8::5]:8443".parse().unwrap());
    let hc = p.health_check.as_ref().unwrap();
    assert_eq!(
        hc.kind,
        CheckKind::Http {
            path: "/ready".into(),
            min_status: 200,
            max_status: 299
        }
    );
    assert_eq!((hc.rise, hc.fall), (3, 2));
    assert!(
        web.ports[1].health_check.is_none(),
        "type: none disables the check"
    );
    let members = &c.members;
    assert_eq!(members[0].address, "192.0.2.11:7947".parse().unwrap());
    assert_eq!(members[1].labels["rack"], "r1");

    let c = Config::from_yaml(
        "services: [{name: s, ports: [{port: 53, protocol: udp, backends: ['127.0.0.1:53']}, {port: 80, backends: ['127.0.0.1:80']}]}]",
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.ports[0].protocol, Protocol::Udp);
    assert!(
        s.ports[0].health_check.is_none(),
        "UDP ports are unchecked by default"
    );
    assert_eq!(s.ports[1].health_check, Some(HealthCheck::default()));
    assert_eq!(s.ports[1].algorithm, Algorithm::RoundRobin);
}

#[test]
fn errors_display_with_paths() {
    let err = Config::from_yaml("pools: [{name: a, addresses: [10.0.0.0/33]}]").unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration has 1 error:\n  pools[0].addresses[0]: \"10.0.0.0/33\" is not a CIDR: the prefix length must be 0-32 for IPv4\n"
    );
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = "#".repeat(MAX_CONFIG_BYTES + 1);
    let err = Config::from_yaml(&big).unwrap_err();
    assert!(err.to_string().contains("limit"));
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// Arbitrary text, including YAML-looking fragments, yields Ok or a
        /// list of errors, never a panic.
        #[test]
        fn arbitrary_text(text in "(pools|services|bgp|l2|members|name|addresses|ports|port|[-:{}\\[\\],\n #a-z0-9./]){0,80}") {
            let _ = Config::from_yaml(&text);
        }

        #[test]
        fn arbitrary_pool_entries(entries in prop::collection::vec("[0-9a-f:./-]{0,24}", 1..5)) {
            let yaml = format!("pools: [{{name: p, addresses: [{}]}}]",
                entries.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>().join(", "));
            if let Err(e) = Config::from_yaml(&yaml) {
                prop_assert!(e.errors().iter().all(|e| !e.message.is_empty()));
            }
        }
    }
}

#[test]
fn forwarder_settings_and_defaults() {
    let c = full();
    let f = &c.forwarder;
    assert_eq!(f.connect_timeout, Duration::from_millis(500));
    assert_eq!(f.idle_timeout, Duration::from_secs(300));
    assert_eq!(
        (f.max_connections, f.udp_max_flows, f.splice),
        (2000, 1000, true)
    );
    assert_eq!(c.services[1].max_connections, Some(50));
    assert_eq!(c.services[0].max_connections, None);
    assert_eq!(f.mode, ferrolb_config::ForwardMode::Userspace);
    let d = Config::from_yaml("").unwrap().forwarder;
    assert_eq!(d, ForwarderSettings::default());
    assert_eq!(d.connect_timeout, Duration::from_secs(2));
}

#[test]
fn failover_settings() {
    let f = full().failover;
    assert_eq!(f.heartbeat_interval, Duration::from_millis(50));
    assert_eq!(f.dead_after, Duration::from_millis(200));
    assert!(f.refresh_interval.is_zero());
    assert!(f.fast_detection, "profile: fast");
    assert!(!FailoverSettings::default().fast_detection);
    assert_eq!(
        f.announce_repeats,
        [Duration::from_millis(50), Duration::from_millis(200)]
    );
    assert_eq!(
        Config::from_yaml("").unwrap().failover,
        FailoverSettings::default()
    );
}

#[test]
fn forwarding_modes_default_to_user_space_and_proxy_ports_stay_there() {
    use ferrolb_config::ForwardMode::{Kernel, Userspace};
    let c = Config::from_yaml(
        "pools: [{name: p, addresses: [192.0.2.10]}]
forwarder: {mode: kernel}
services:
  - name: web
    ports:
      - {port: 80, backends: [\"10.0.0.1:80\"]}
      - {port: 81, backends: [\"10.0.0.1:80\"], mode: userspace}
      - {port: 82, backends: [\"10.0.0.1:80\"], proxyProtocol: v1}
",
    )
    .unwrap();
    assert_eq!(c.forwarder.mode, Kernel);
    let modes: Vec<_> = c.services[0]
        .ports
        .iter()
        .map(|p| p.effective_mode(c.forwarder.mode))
        .collect();
    assert_eq!(modes, vec![Kernel, Userspace, Userspace]);
    assert_eq!(c.services[0].ports[0].mode, None);
    let d = Config::from_yaml("").unwrap();
    assert_eq!(d.forwarder.mode, Userspace);
}

#[test]
fn kernel_dsr_is_a_kernel_mode_whose_backends_keep_the_port() {
    use ferrolb_config::ForwardMode::{Kernel, KernelDsr};
    let c = Config::from_yaml(
        "pools: [{name: p, addresses: [192.0.2.10]}]
forwarder: {mode: kernel-dsr}
services:
  - name: web
    ports:
      - {port: 80, backends: [\"10.0.0.1:80\", \"10.0.0.2:80\"]}
      - {port: 81, backends: [\"10.0.0.1:8081\"], mode: kernel}
",
    )
    .unwrap();
    assert_eq!(c.forwarder.mode, KernelDsr);
    assert!(KernelDsr.is_kernel() && Kernel.is_kernel());
    assert!(!ferrolb_config::ForwardMode::Userspace.is_kernel());
    assert_eq!(KernelDsr.to_string(), "kernel-dsr");
    let modes: Vec<_> = c.services[0]
        .ports
        .iter()
        .map(|p| p.effective_mode(c.forwarder.mode))
        .collect();
    assert_eq!(modes, vec![KernelDsr, Kernel]);
}
