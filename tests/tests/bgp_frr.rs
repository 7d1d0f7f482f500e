//! BGP mode against FRR 8 (`bgpd` from the Debian `frr` package) in a network
//! namespace: the session comes up with TCP-MD5, the VIP arrives with its AS
//! path, origin, next hop, community and large community (and an IPv6 VIP over
//! an MP-BGP IPv6 session with our global next hop), FRR's reflection of
//! the route back to the speaker is tolerated, and SIGTERM withdraws at once.
//! Also iBGP with a 4-octet ASN and LOCAL_PREF, with the IPv6 VIP over the
//! one IPv4 session.
//! bgpd runs without zebra (`-Z`): the test reads FRR's BGP table, not a kernel.
//! Needs root and `frr`; skips loudly without them (a failure in CI).

use ferrolb_tests::netns::Lab;
use ferrolb_tests::{require, routers, Need};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BGPD: &str = "/usr/lib/frr/bgpd";

struct Frr {
    lab: Lab,
    dir: PathBuf,
}

impl Frr {
    fn vtysh(&self, cmd: &str) -> String {
        let vty = self.dir.join("vty");
        let out = self.lab.exec(
            "router",
            &["vtysh", "--vty_socket", vty.to_str().unwrap(), "-c", cmd],
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn logs(&self) -> String {
        routers::read_logs(&self.dir, &["bgpd.log", "speaker.log"])
    }

    fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&Frr) -> bool) -> Duration {
        routers::wait_for(what, within, || cond(self), || self.logs())
    }

    fn route(&self) -> String {
        self.vtysh("show bgp ipv4 unicast 203.0.113.10/32 json")
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts FRR's bgpd (without zebra) in the router namespace with `router`
/// as its `router bgp` section.
fn start_bgpd(tag: &str, router: &str) -> (Lab, PathBuf) {
    let (mut lab, dir) = routers::router_and_node(tag, "frr");
    for sub in ["vty", "vartmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("bgpd.conf"),
        format!("frr defaults traditional\nhostname r1\nlog stdout informational\n{router}"),
    )
    .unwrap();
    // FRR writes crash and per-thread logs under /var/tmp/frr: keep them in the
    // test's directory (`ip netns exec` gives the daemon its own mount namespace).
    let start = format!(
        "mount --bind {d}/vartmp /var/tmp && exec {BGPD} -Z -S -f {d}/bgpd.conf -i {d}/bgpd.pid --vty_socket {d}/vty -P 0",
        d = dir.display()
    );
    lab.spawn("router", &["sh", "-c", &start], &dir.join("bgpd.log"));
    (lab, dir)
}

const FRR_NEEDS: [Need; 4] = [
    Need::Root,
    Need::Program("ip"),
    Need::Program(BGPD),
    Need::Program("vtysh"),
];

#[test]
fn frr_ibgp_four_octet_asn_and_ipv6_over_one_ipv4_session() {
    if !require("FRR: iBGP, 4-octet ASN, IPv6 over IPv4", &FRR_NEEDS) {
        return;
    }
    let (mut lab, dir) = start_bgpd(
        "f4",
        "router bgp 4200000001
 bgp router-id 192.0.2.1
 neighbor 192.0.2.11 remote-as 4200000001
 neighbor 192.0.2.11 passive
 neighbor 192.0.2.11 timers 3 9
 address-family ipv6 unicast
  neighbor 192.0.2.11 activate
 exit-address-family
",
    );
    let cfg = dir.join("speaker.yaml");
    std::fs::write(
        &cfg,
        "pools: [{name: vips, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}]
services: [{name: web, ip: 203.0.113.10}, {name: web6, ip: \"2001:db8:100::10\"}]
bgp:
  routerId: 192.0.2.11
  peers:
    - {name: frr, address: 192.0.2.1, asn: 4200000001, myAsn: 4200000001, holdTime: 9s}
  advertisements: [{localPref: 300, communities: [\"65000:100\"]}]
",
    )
    .unwrap();
    routers::speaker(
        &mut lab,
        "node",
        &cfg,
        "node1",
        &["--log-level", "debug"],
        &dir.join("speaker.log"),
    );
    let frr = Frr { lab, dir };
    frr.wait_for("the IPv4 VIP in FRR", Duration::from_secs(20), |f| {
        f.route().contains("\"prefix\":\"203.0.113.10/32\"")
    });
    let route: String = frr.route().split_whitespace().collect();
    assert!(
        route.contains("\"locPrf\":300") || route.contains("\"localpref\":300"),
        "LOCAL_PREF: {route}"
    );
    assert!(route.contains("\"ip\":\"192.0.2.11\""), "{route}");
    assert!(
        route.contains("\"string\":\"Local\""),
        "empty AS path on iBGP: {route}"
    );
    frr.wait_for(
        "the IPv6 VIP in FRR over the IPv4 session",
        Duration::from_secs(20),
        |f| {
            f.vtysh("show bgp ipv6 unicast 2001:db8:100::10/128 json")
                .contains("\"prefix\":\"2001:db8:100::10/128\"")
        },
    );
    let route6: String = frr
        .vtysh("show bgp ipv6 unicast 2001:db8:100::10/128 json")
        .split_whitespace()
        .collect();
    assert!(
        route6.contains("\"ip\":\"2001:db8::11\""),
        "the node's IPv6 next hop: {route6}"
    );
    let neighbor = frr.vtysh("show bgp neighbors 192.0.2.11 json");
    let squashed: String = neighbor.split_whitespace().collect();
    assert!(squashed.contains("\"remoteAs\":4200000001"), "{neighbor}");
    assert!(
        squashed.contains("\"bgpState\":\"Established\""),
        "{neighbor}"
    );
}

#[test]
fn frr_learns_the_vip_over_md5_and_loses_it_on_shutdown() {
    if !require("frr_learns_the_vip", &FRR_NEEDS) {
        return;
    }
    let (mut lab, dir) = start_bgpd(
        "f",
        "router bgp 65000
 bgp router-id 192.0.2.1
 no bgp ebgp-requires-policy
 neighbor 192.0.2.11 remote-as 65001
 neighbor 192.0.2.11 passive
 neighbor 192.0.2.11 password frr-md5-key
 neighbor 192.0.2.11 timers 3 9
 neighbor 2001:db8::11 remote-as 65001
 neighbor 2001:db8::11 passive
 neighbor 2001:db8::11 timers 3 9
 address-family ipv4 unicast
  maximum-paths 8
  no neighbor 2001:db8::11 activate
 exit-address-family
 address-family ipv6 unicast
  neighbor 2001:db8::11 activate
 exit-address-family
",
    );
    let cfg = dir.join("speaker.yaml");
    std::fs::write(
        &cfg,
        "pools: [{name: vips, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}]
services: [{name: web, ip: 203.0.113.10}, {name: web6, ip: \"2001:db8:100::10\"}]
bgp:
  routerId: 192.0.2.11
  peers:
    - {name: frr, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s, password: frr-md5-key}
    - {name: frr6, address: \"2001:db8::1\", asn: 65000, myAsn: 65001, holdTime: 9s}
  advertisements: [{communities: [\"65000:100\"], largeCommunities: [\"65001:1:2\"]}]
",
    )
    .unwrap();
    let speaker = routers::speaker(
        &mut lab,
        "node",
        &cfg,
        "node1",
        &["--log-level", "debug"],
        &dir.join("speaker.log"),
    );
    let mut frr = Frr { lab, dir };
    let took = frr.wait_for("the VIP in FRR", Duration::from_secs(20), |f| {
        f.route().contains("\"prefix\":\"203.0.113.10/32\"")
    });
    eprintln!("speaker start to route in FRR: {took:?}");
    let route = frr.route();
    for want in [
        "\"string\":\"65001\"",
        "\"origin\":\"IGP\"",
        "\"valid\":true",
        "\"list\":[\n          \"65000:100\"",
        "\"65001:1:2\"",
        "\"ip\":\"192.0.2.11\"",
    ] {
        let squashed: String = route.split_whitespace().collect();
        let want_squashed: String = want.split_whitespace().collect();
        assert!(squashed.contains(&want_squashed), "{want} in:\n{route}");
    }
    // IPv6 over an IPv6 session (MP-BGP), with our global address as next hop.
    frr.wait_for("the IPv6 VIP in FRR", Duration::from_secs(20), |f| {
        f.vtysh("show bgp ipv6 unicast 2001:db8:100::10/128 json")
            .contains("\"prefix\":\"2001:db8:100::10/128\"")
    });
    let route6: String = frr
        .vtysh("show bgp ipv6 unicast 2001:db8:100::10/128 json")
        .split_whitespace()
        .collect();
    assert!(route6.contains("\"ip\":\"2001:db8::11\""), "{route6}");
    assert!(route6.contains("\"string\":\"65001\""), "{route6}");
    // FRR sends the route back (AS path 65000 65001); the speaker counts it and
    // stays up.
    std::thread::sleep(Duration::from_millis(500));
    let summary = frr.vtysh("show bgp ipv4 unicast summary json");
    assert!(summary.contains("\"state\":\"Established\""), "{summary}");

    let t = Instant::now();
    frr.lab.kill(speaker, "TERM");
    frr.wait_for("withdrawal after SIGTERM", Duration::from_secs(5), |f| {
        !f.route().contains("203.0.113.10/32")
    });
    eprintln!("SIGTERM to route gone from FRR: {:?}", t.elapsed());
}
