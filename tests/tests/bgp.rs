//! BGP mode against a real router: BIRD 2 in a network namespace, the
//! speaker (`ferrolb-speaker standalone`) in another, on one bridge. Needs
//! root and the `bird2` package; skips loudly without them (a failure in CI).

use ferrolb_tests::netns::Lab;
use ferrolb_tests::{require, routers, Need};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Rig {
    lab: Lab,
    dir: PathBuf,
    speaker: Option<u32>,
}

/// Waits until the router in namespace `router` listens on TCP 179 (it
/// started, and took its configuration); panics with its log after 15 s.
fn wait_listening(lab: &Lab, what: &str, log: &Path) {
    let t = Instant::now();
    while !lab.listens("router", 179) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{what} never listened on 179: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn bird_conf(dir: &Path, password: Option<&str>) -> String {
    let pw = password
        .map(|p| format!("password \"{p}\";"))
        .unwrap_or_default();
    let pw6 = pw.clone();
    format!(
        "router id 192.0.2.1;
log \"{}/bird.log\" all;
protocol device {{ }}
protocol bgp ferrolb {{
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.11 as 65001;
  hold time 9;
  passive on;
  {pw}
  ipv4 {{ import all; export none; }};
}}
protocol bgp ferrolb6 {{
  local 2001:db8::1 as 65000;
  neighbor 2001:db8::11 as 65001;
  hold time 9;
  passive on;
  {pw6}
  ipv6 {{ import all; export none; }};
}}
",
        dir.display()
    )
}

fn speaker_conf(services: &str, password: Option<&str>) -> String {
    let pw = password
        .map(|p| format!(", password: \"{p}\""))
        .unwrap_or_default();
    format!(
        "pools: [{{name: vips, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}}]
services:
{services}
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s{pw}}}
    - {{name: bird6, address: \"2001:db8::1\", asn: 65000, myAsn: 65001, holdTime: 9s{pw}}}
  advertisements: [{{communities: [\"65000:100\"], largeCommunities: [\"65001:1:2\"]}}]
"
    )
}

impl Rig {
    fn start(tag: &str, password: Option<&str>) -> Rig {
        Rig::start_with(tag, password, false, false)
    }

    /// With `bfd`, BIRD and the IPv4 peer run BFD at 100 ms x 3.
    /// With `passive`, the speaker waits for BIRD to connect to it.
    fn start_with(tag: &str, password: Option<&str>, bfd: bool, passive: bool) -> Rig {
        let mut bird = bird_conf(Path::new("DIR"), password);
        if passive {
            bird = bird.replacen(
                "  passive on;\n",
                "  connect delay time 1;\n  connect retry time 1;\n",
                1,
            );
        }
        if bfd {
            bird = bird.replacen("  passive on;\n", "  passive on;\n  bfd on;\n", 1);
            bird.push_str("protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n");
        }
        let mut speaker = speaker_conf(
            "  - {name: web, ip: 203.0.113.10}\n  - {name: api, ip: 203.0.113.11}\n  - {name: web6, ip: \"2001:db8:100::10\"}",
            password,
        );
        if passive {
            speaker = speaker.replacen("holdTime: 9s", "holdTime: 9s, passive: true", 1);
        }
        if bfd {
            speaker = speaker.replacen(
                "holdTime: 9s",
                "holdTime: 9s, bfd: {receiveInterval: 100ms, transmitInterval: 100ms, detectMultiplier: 3}",
                1,
            );
        }
        Rig::custom(tag, &bird, &speaker)
    }

    /// BIRD on `bird` (where `DIR` stands for the rig's directory) and the speaker
    /// on `speaker`, router 192.0.2.1 / 2001:db8::1, node .11.
    fn custom(tag: &str, bird: &str, speaker: &str) -> Rig {
        let (mut lab, dir) = routers::router_and_node(tag, "bgp");
        std::fs::write(
            dir.join("bird.conf"),
            bird.replace("DIR", dir.to_str().unwrap()),
        )
        .unwrap();
        routers::bird(&mut lab, "router", &dir);
        let mut rig = Rig {
            lab,
            dir,
            speaker: None,
        };
        std::fs::write(rig.dir.join("speaker.yaml"), speaker).unwrap();
        rig.start_speaker();
        rig
    }

    fn start_speaker(&mut self) {
        let cfg = self.dir.join("speaker.yaml");
        let pid = routers::speaker(
            &mut self.lab,
            "node",
            &cfg,
            "node1",
            &["--reload-poll", "100ms", "--log-level", "debug"],
            &self.dir.join("speaker.log"),
        );
        self.speaker = Some(pid);
    }

    fn birdc(&self, cmd: &str) -> String {
        routers::birdc(&self.lab, "router", &self.dir.join("bird.ctl"), cmd)
    }

    /// The speaker's `/metrics` (default address, inside the node's namespace).
    fn metrics(&self) -> String {
        self.lab.speaker_metrics("node")
    }

    fn logs(&self) -> String {
        format!(
            "--- bird v6 route\n{}\n--- bird protocols\n{}\n--- speaker\n{}\n--- bird\n{}{}",
            self.birdc("show route for 2001:db8:100::10 all"),
            self.birdc("show protocols all"),
            std::fs::read_to_string(self.dir.join("speaker.log")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default(),
            std::fs::read_to_string(self.dir.join("bird.stderr")).unwrap_or_default()
        )
    }

    fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&Rig) -> bool) -> Duration {
        routers::wait_for(what, within, || cond(self), || self.logs())
    }

    fn has_route(&self, prefix: &str) -> bool {
        let via = if prefix.contains(':') {
            "via 2001:db8::11"
        } else {
            "via 192.0.2.11"
        };
        self.birdc(&format!("show route for {prefix} all"))
            .contains(via)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn bird_learns_the_vips_with_attributes_and_loses_them_on_removal_and_shutdown() {
    if !require(
        "bird_learns_the_vips",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let mut rig = Rig::start("g", None);
    let took = rig.wait_for("session and routes", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10") && r.has_route("203.0.113.11")
    });
    eprintln!("speaker start to both routes in BIRD: {took:?}");
    let detail = rig.birdc("show route for 203.0.113.10 all");
    assert!(detail.contains("203.0.113.10/32"), "{detail}");
    assert!(
        detail.contains("BGP.as_path: 65001"),
        "eBGP path carries our AS: {detail}"
    );
    assert!(detail.contains("BGP.origin: IGP"), "{detail}");
    assert!(detail.contains("BGP.next_hop: 192.0.2.11"), "{detail}");
    assert!(detail.contains("(65000,100)"), "community: {detail}");
    assert!(
        detail.contains("(65001, 1, 2)"),
        "large community: {detail}"
    );
    let proto = rig.birdc("show protocols all ferrolb");
    assert!(proto.contains("Established"), "{proto}");
    assert!(proto.contains("4-octet AS numbers"), "{proto}");
    assert!(proto.contains("Graceful restart"), "{proto}");
    let metrics = rig.metrics();
    for line in [
        "ferrolb_bgp_session_up{peer=\"bird\"} 1",
        "ferrolb_bgp_prefixes_advertised{peer=\"bird\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert!(
        metrics.contains("ferrolb_bgp_updates_total{peer=\"bird\",direction=\"sent\"}")
            && metrics.contains("ferrolb_bgp_session_last_change_timestamp_seconds{peer=\"bird\"}"),
        "{metrics}"
    );
    // IPv6: an MP-BGP session over IPv6 carries the /128 with our global address as next hop.
    let took6 = rig.wait_for("IPv6 route", Duration::from_secs(20), |r| {
        r.has_route("2001:db8:100::10")
    });
    eprintln!("IPv6 route in BIRD after a further {took6:?}");
    let detail6 = rig.birdc("show route for 2001:db8:100::10 all");
    assert!(detail6.contains("2001:db8:100::10/128"), "{detail6}");
    assert!(detail6.contains("BGP.next_hop: 2001:db8::11"), "{detail6}");

    // Removing a service withdraws its route and keeps the other.
    std::fs::write(
        rig.dir.join("speaker.yaml"),
        speaker_conf(
            "  - {name: web, ip: 203.0.113.10}\n  - {name: web6, ip: \"2001:db8:100::10\"}",
            None,
        ),
    )
    .unwrap();
    let took = rig.wait_for("withdrawal", Duration::from_secs(5), |r| {
        !r.has_route("203.0.113.11")
    });
    eprintln!("service removed to route withdrawn: {took:?}");
    assert!(rig.has_route("203.0.113.10"));

    // SIGTERM: the speaker sends a Cease; BIRD drops the routes at once.
    let pid = rig.speaker.take().unwrap();
    let t = Instant::now();
    rig.lab.kill(pid, "TERM");
    rig.wait_for("routes gone after SIGTERM", Duration::from_secs(5), |r| {
        !r.has_route("203.0.113.10")
    });
    eprintln!("SIGTERM to route gone: {:?}", t.elapsed());
    let proto = rig.birdc("show protocols all ferrolb");
    assert!(
        proto.contains("Administrative shutdown") || proto.contains("shutting down"),
        "Cease seen by BIRD: {proto}\n{}",
        rig.logs()
    );
}

#[test]
fn tcp_md5_session_with_bird() {
    if !require(
        "tcp_md5_session_with_bird",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let rig = Rig::start("h", Some("s3cret-key"));
    rig.wait_for("MD5 session and route", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10")
    });
    assert!(rig
        .birdc("show protocols all ferrolb")
        .contains("Established"));
}

/// GoBGP (passive) in the router namespace with `toml`, the speaker on the
/// node with `speaker`.
fn gobgp_rig(tag: &str, toml: &str, speaker: &str) -> (Lab, PathBuf) {
    let (mut lab, dir) = routers::router_and_node(tag, "bgp");
    std::fs::write(dir.join("gobgpd.toml"), toml).unwrap();
    routers::gobgpd(
        &mut lab,
        "router",
        &dir.join("gobgpd.toml"),
        &dir.join("gobgpd.log"),
    );
    std::fs::write(dir.join("speaker.yaml"), speaker).unwrap();
    routers::speaker(
        &mut lab,
        "node",
        &dir.join("speaker.yaml"),
        "node1",
        &["--log-level", "debug"],
        &dir.join("speaker.log"),
    );
    (lab, dir)
}

/// Waits until GoBGP's RIB of `family` (`ipv4`, `ipv6`) lists `prefix`; returns the table.
fn gobgp_route(lab: &Lab, dir: &Path, family: &str, prefix: &str) -> String {
    let t = Instant::now();
    loop {
        let text = routers::gobgp(lab, "router", &["global", "rib", "-a", family]);
        if text.contains(prefix) {
            eprintln!("GoBGP has {prefix} after {:?}:\n{text}", t.elapsed());
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "GoBGP never learned {prefix}: {text}\n{}",
            routers::read_logs(dir, &["gobgpd.log", "speaker.log"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const GOBGP_NEEDS: [Need; 4] = [
    Need::Root,
    Need::Program("ip"),
    Need::Program("gobgpd"),
    Need::Program("gobgp"),
];

#[test]
fn gobgp_learns_the_vip() {
    if !require("gobgp_learns_the_vip", &GOBGP_NEEDS) {
        return;
    }
    let (lab, dir) = gobgp_rig(
        "k",
        "[global.config]\n  as = 65000\n  router-id = \"192.0.2.1\"\n  local-address-list = [\"192.0.2.1\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"192.0.2.11\"\n    peer-as = 65001\n\
         \x20 [neighbors.transport.config]\n    passive-mode = true\n\
         \x20 [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n",
        &speaker_conf("  - {name: web, ip: 203.0.113.10}", None).replace(
            "    - {name: bird6, address: \"2001:db8::1\", asn: 65000, myAsn: 65001, holdTime: 9s}\n",
            "",
        ),
    );
    let text = gobgp_route(&lab, &dir, "ipv4", "203.0.113.10/32");
    assert!(text.contains("192.0.2.11"), "next hop: {text}");
    assert!(text.contains("65001"), "AS path: {text}");
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The speaker's config for the iBGP / 4-octet / IPv6 interop cases: one
/// IPv4 session to 192.0.2.1 in AS 4200000001 (iBGP) carrying an IPv4 and
/// an IPv6 VIP, LOCAL_PREF 300 and a community.
fn ibgp_four_octet_speaker(password: &str) -> String {
    format!(
        "pools: [{{name: vips, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}}]
services:
  - {{name: web, ip: 203.0.113.10}}
  - {{name: web6, ip: \"2001:db8:100::10\"}}
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: router, address: 192.0.2.1, asn: 4200000001, myAsn: 4200000001, holdTime: 9s, password: {password}}}
  advertisements: [{{localPref: 300, communities: [\"65000:100\"]}}]
"
    )
}

/// The same config without the IPv4 VIP: its route must be withdrawn.
fn without_web(speaker: &str) -> String {
    speaker.replace("  - {name: web, ip: 203.0.113.10}\n", "")
}

/// GoBGP's neighbor config for the iBGP / 4-octet / IPv6 cases, with a TCP-MD5 password.
fn gobgp_ibgp_toml(password: &str) -> String {
    format!(
        "[global.config]
  as = 4200000001
  router-id = \"192.0.2.1\"
  local-address-list = [\"192.0.2.1\"]
[[neighbors]]
  [neighbors.config]
    neighbor-address = \"192.0.2.11\"
    peer-as = 4200000001
    auth-password = \"{password}\"
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.timers.config]
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = \"ipv4-unicast\"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = \"ipv6-unicast\"
"
    )
}

#[test]
fn gobgp_ibgp_four_octet_asn_and_ipv6() {
    if !require("GoBGP: iBGP, 4-octet ASN, IPv6", &GOBGP_NEEDS) {
        return;
    }
    let speaker = ibgp_four_octet_speaker("gobgp-md5");
    let (lab, dir) = gobgp_rig("k4", &gobgp_ibgp_toml("gobgp-md5"), &speaker);
    let v4 = gobgp_route(&lab, &dir, "ipv4", "203.0.113.10/32");
    assert!(v4.contains("192.0.2.11"), "next hop: {v4}");
    assert!(v4.contains("LocalPref: 300"), "LOCAL_PREF on iBGP: {v4}");
    assert!(v4.contains("65000:100"), "community: {v4}");
    let v6 = gobgp_route(&lab, &dir, "ipv6", "2001:db8:100::10/128");
    assert!(
        v6.contains("2001:db8::11"),
        "the node's IPv6 next hop over the IPv4 session: {v6}"
    );
    let neighbor = routers::gobgp(&lab, "router", &["neighbor", "192.0.2.11"]);
    assert!(neighbor.contains("4200000001"), "{neighbor}");
    // Removing the IPv4 service withdraws its route; the IPv6 one stays.
    std::fs::write(dir.join("speaker.yaml"), without_web(&speaker)).unwrap();
    routers::wait_for(
        "the withdrawal in GoBGP",
        Duration::from_secs(10),
        || {
            !routers::gobgp(&lab, "router", &["global", "rib", "-a", "ipv4"])
                .contains("203.0.113.10/32")
        },
        || routers::read_logs(&dir, &["gobgpd.log", "speaker.log"]),
    );
    assert!(
        routers::gobgp(&lab, "router", &["global", "rib", "-a", "ipv6"])
            .contains("2001:db8:100::10/128")
    );
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gobgp_with_the_wrong_md5_password_never_establishes() {
    if !require("GoBGP: wrong TCP-MD5 password", &GOBGP_NEEDS) {
        return;
    }
    let (lab, dir) = gobgp_rig(
        "km",
        &gobgp_ibgp_toml("the-right-one"),
        &ibgp_four_octet_speaker("a-wrong-one"),
    );
    // Positive signs first: GoBGP runs and listens, knows the neighbour,
    // and its kernel refused the speaker's SYNs for their signature.
    wait_listening(&lab, "gobgpd", &dir.join("gobgpd.log"));
    let refused = lab.wait_md5_refused("router", Duration::from_secs(10));
    // A few more connect attempts' worth (the speaker retries after 2 s, 4 s).
    std::thread::sleep(Duration::from_secs(3));
    let neighbor = routers::gobgp(&lab, "router", &["neighbor"]);
    assert!(
        neighbor.contains("192.0.2.11"),
        "GoBGP has the neighbour: {neighbor}"
    );
    assert!(!neighbor.contains("Establ"), "{neighbor}");
    assert!(
        lab.tcp_ext("router", "TCPMD5Failure") + lab.tcp_ext("router", "TCPMD5Unexpected")
            > refused,
        "the refusals went on"
    );
    let rib = routers::gobgp(&lab, "router", &["global", "rib", "-a", "ipv4"]);
    assert!(!rib.contains("203.0.113.10/32"), "{rib}");
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn graceful_restart_keeps_routes_while_the_speaker_restarts() {
    if !require(
        "graceful_restart_keeps_routes",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let mut rig = Rig::start("r", None);
    rig.wait_for("routes", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10")
    });
    // A crash or an upgrade (SIGKILL: no Cease): BIRD, as graceful-restart helper, keeps the routes (stale).
    let pid = rig.speaker.take().unwrap();
    rig.lab.kill(pid, "KILL");
    std::thread::sleep(Duration::from_secs(2));
    let during = rig.birdc("show route for 203.0.113.10 all");
    assert!(
        rig.has_route("203.0.113.10"),
        "route kept during the restart: {during}\n{}",
        rig.logs()
    );
    // The speaker comes back, re-advertises and sends End-of-RIB; the route never went away.
    // (With gracefulRestart disabled the same SIGKILL withdraws the route at once: checked by hand.)
    rig.start_speaker();
    rig.wait_for(
        "session back with the route",
        Duration::from_secs(15),
        |r| {
            r.birdc("show protocols all ferrolb")
                .contains("Established")
                && r.has_route("203.0.113.10")
        },
    );
}

#[test]
fn bfd_withdraws_a_silently_dead_speaker_within_a_second() {
    if !require(
        "bfd_withdraws_a_silently_dead_speaker",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let rig = Rig::start_with("f", None, true, false);
    rig.wait_for("route and BFD up", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10") && r.birdc("show bfd sessions").contains("Up")
    });
    // Silent death: the process freezes, no FIN, no Cease. Without BFD the router
    // would wait for the 9 s hold timer.
    let metrics = rig.metrics();
    assert!(
        metrics.contains("ferrolb_bfd_session_up{peer=\"bird\"} 1"),
        "{metrics}"
    );
    let pid = rig.speaker.unwrap();
    let t = Instant::now();
    ferrolb_tests::netns::run(&["kill", "-STOP", &pid.to_string()]);
    let took = rig.wait_for("route withdrawn by BFD", Duration::from_secs(5), |r| {
        !r.has_route("203.0.113.10")
    });
    let _ = ferrolb_tests::netns::run(&["kill", "-CONT", &pid.to_string()]);
    eprintln!("frozen speaker to route withdrawn with BFD 100 ms x 3: {took:?}");
    assert!(took < Duration::from_secs(2), "took {:?}", t.elapsed());
}

/// ExaBGP (passive, dumping every message it receives as one JSON line) in
/// the router namespace, the speaker on the node.
struct Exa {
    lab: Lab,
    dir: PathBuf,
    child: std::process::Child,
}

impl Exa {
    /// `neighbor` is the body of ExaBGP's neighbor block (AS numbers, families, MD5).
    fn start(tag: &str, neighbor: &str, speaker: &str) -> Exa {
        let (mut lab, dir) = routers::router_and_node(tag, "bgp");
        std::fs::write(
            dir.join("exabgp.conf"),
            format!(
                "process dump {{\n  run /bin/sh -c 'cat >> {}';\n  encoder json;\n}}\n\
                 neighbor 192.0.2.11 {{\n  router-id 192.0.2.1;\n  local-address 192.0.2.1;\n  hold-time 9;\n  passive true;\n{neighbor}\
                 \x20 api {{\n    processes [ dump ];\n    receive {{ parsed; update; }}\n  }}\n}}\n",
                dir.join("received.json").display()
            ),
        )
        .unwrap();
        let ns = lab.name("router");
        let log = std::fs::File::create(dir.join("exabgp.log")).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "env",
                "exabgp_daemon_user=root",
                "exabgp_daemon_daemonize=false",
                "exabgp_api_cli=false",
            ])
            .args([
                "exabgp_log_destination=stdout",
                "exabgp_tcp_bind=192.0.2.1",
                "exabgp_tcp_port=179",
                "exabgp",
            ])
            .arg(dir.join("exabgp.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(dir.join("speaker.yaml"), speaker).unwrap();
        routers::speaker(
            &mut lab,
            "node",
            &dir.join("speaker.yaml"),
            "node1",
            &["--log-level", "debug", "--reload-poll", "100ms"],
            &dir.join("speaker.log"),
        );
        Exa { lab, dir, child }
    }

    /// Waits until one received message (line) holds every one of `needles`; returns that line.
    fn wait(&self, needles: &[&str]) -> String {
        let t = Instant::now();
        loop {
            let text = std::fs::read_to_string(self.dir.join("received.json")).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                eprintln!("ExaBGP received {needles:?} after {:?}", t.elapsed());
                return line.to_string();
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "ExaBGP never received {needles:?}: {text}\n{}",
                routers::read_logs(&self.dir, &["exabgp.log", "speaker.log"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Exa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The namespaces go with `lab`, after the daemon.
        let _ = &self.lab;
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn exabgp_learns_the_vip() {
    if !require(
        "exabgp_learns_the_vip",
        &[Need::Root, Need::Program("ip"), Need::Program("exabgp")],
    ) {
        return;
    }
    let exa = Exa::start(
        "x",
        "  local-as 65000;\n  peer-as 65001;\n",
        &speaker_conf("  - {name: web, ip: 203.0.113.10}", None)
            .replace("    - {name: bird6, address: \"2001:db8::1\", asn: 65000, myAsn: 65001, holdTime: 9s}\n", ""),
    );
    let found = exa.wait(&["203.0.113.10/32"]);
    assert!(
        found.contains("\"as-path\": [ 65001 ]") || found.contains("\"as-path\": [65001]"),
        "{found}"
    );
    assert!(
        found.contains("65000:100") || found.contains("[ 65000, 100 ]"),
        "community: {found}"
    );
}

#[test]
fn exabgp_ibgp_four_octet_asn_md5_ipv6_and_withdrawal() {
    if !require(
        "ExaBGP: iBGP, 4-octet ASN, TCP-MD5, IPv6",
        &[Need::Root, Need::Program("ip"), Need::Program("exabgp")],
    ) {
        return;
    }
    let speaker = ibgp_four_octet_speaker("exa-md5");
    let exa = Exa::start(
        "x4",
        "  local-as 4200000001;\n  peer-as 4200000001;\n  md5-password exa-md5;\n  family {\n    ipv4 unicast;\n    ipv6 unicast;\n  }\n",
        &speaker,
    );
    let found = exa.wait(&["203.0.113.10/32", "announce"]);
    let found6 = exa.wait(&["2001:db8:100::10/128", "announce"]);
    assert!(
        found.contains("\"local-preference\": 300"),
        "LOCAL_PREF: {found}"
    );
    assert!(found.contains("\"192.0.2.11\""), "IPv4 next hop: {found}");
    assert!(
        found.contains("4200000001"),
        "4-octet AS in the session: {found}"
    );
    assert!(
        found6.contains("\"2001:db8::11\""),
        "the node's IPv6 next hop: {found6}"
    );
    // Removing the IPv4 service withdraws its route.
    std::fs::write(exa.dir.join("speaker.yaml"), without_web(&speaker)).unwrap();
    exa.wait(&["withdraw", "203.0.113.10/32"]);
}

#[test]
fn passive_peer_accepts_birds_connection_with_md5() {
    if !require(
        "passive_peer_accepts_birds_connection",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let rig = Rig::start_with("p", Some("listen-key"), false, true);
    rig.wait_for(
        "BIRD connects to the passive speaker",
        Duration::from_secs(20),
        |r| r.has_route("203.0.113.10"),
    );
    assert!(rig
        .birdc("show protocols all ferrolb")
        .contains("Established"));
}

#[test]
fn ibgp_with_four_octet_asn_carries_local_pref() {
    if !require(
        "ibgp_with_four_octet_asn",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let bird = "router id 192.0.2.1;
log \"DIR/bird.log\" all;
protocol device { }
protocol bgp ferrolb {
  local 192.0.2.1 as 4200000001;
  neighbor 192.0.2.11 as 4200000001;
  direct;
  hold time 9;
  passive on;
  ipv4 { import all; export none; gateway direct; };
}
";
    let speaker = "pools: [{name: vips, addresses: [203.0.113.0/28]}]
services: [{name: web, ip: 203.0.113.10}]
bgp:
  routerId: 192.0.2.11
  peers: [{name: bird, address: 192.0.2.1, asn: 4200000001, myAsn: 4200000001, holdTime: 9s}]
  advertisements: [{localPref: 250, communities: [no-export]}]
";
    let rig = Rig::custom("i", bird, speaker);
    rig.wait_for("iBGP route", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10")
    });
    let proto = rig.birdc("show protocols all ferrolb");
    assert!(proto.contains("Session:          internal"), "{proto}");
    assert!(proto.contains("4-octet AS numbers"), "{proto}");
    let detail = rig.birdc("show route for 203.0.113.10 all");
    assert!(detail.contains("BGP.local_pref: 250"), "{detail}");
    assert!(
        detail.contains("BGP.as_path: \n") || detail.contains("BGP.as_path:\n"),
        "empty AS path on iBGP: {detail}"
    );
    assert!(
        detail.contains("no_export") || detail.contains("(65535,65281)"),
        "{detail}"
    );
}

#[test]
fn tcp_md5_with_the_wrong_password_never_establishes() {
    if !require(
        "tcp_md5_with_the_wrong_password",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let bird = bird_conf(Path::new("DIR"), Some("right-key"));
    let speaker = speaker_conf("  - {name: web, ip: 203.0.113.10}", Some("wrong-key"));
    let rig = Rig::custom("w", &bird, &speaker);
    // The kernel drops every segment whose signature does not verify, so
    // nothing ever reaches BGP: wait for those drops (the positive sign that
    // the speaker did try), then a few more connect attempts.
    wait_listening(&rig.lab, "BIRD", &rig.dir.join("bird.log"));
    rig.lab.wait_md5_refused("router", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let proto = rig.birdc("show protocols all ferrolb");
    assert!(proto.contains("ferrolb"), "BIRD runs the protocol: {proto}");
    assert!(!proto.contains("Established"), "{proto}");
    assert!(!rig.has_route("203.0.113.10"));
    // The series exists from the start, so `session_up == 0` alerts fire.
    let metrics = rig.metrics();
    assert!(
        metrics.contains("ferrolb_bgp_session_up{peer=\"bird\"} 0"),
        "{metrics}"
    );
}

#[test]
fn ipv6_vips_reach_bird_over_an_ipv4_session_with_the_nodes_ipv6_next_hop() {
    if !require(
        "BGP IPv6 over an IPv4 session against BIRD",
        &[Need::Root, Need::Program("bird"), Need::Program("birdc")],
    ) {
        return;
    }
    // One IPv4 session carrying both families (MP-BGP); no nextHopIPv6 in the
    // config: the speaker takes the node's IPv6 address on the session's link.
    let bird = "router id 192.0.2.1;
log \"DIR/bird.log\" all;
protocol device { }
protocol bgp ferrolb {
  local 192.0.2.1 as 65000;
  neighbor 192.0.2.11 as 65001;
  hold time 9;
  passive on;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
";
    let speaker = "pools: [{name: vips, addresses: [203.0.113.0/28, \"2001:db8:100::/120\"]}]
services:
  - {name: web, ip: 203.0.113.10}
  - {name: web6, ip: \"2001:db8:100::10\"}
bgp:
  routerId: 192.0.2.11
  peers:
    - {name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s}
";
    let rig = Rig::custom("v6v4", bird, speaker);
    rig.wait_for(
        "both routes over the IPv4 session",
        Duration::from_secs(15),
        |r| r.has_route("203.0.113.10/32") && r.has_route("2001:db8:100::10/128"),
    );
    let detail = rig.birdc("show route for 2001:db8:100::10 all");
    assert!(
        detail.contains("[ferrolb "),
        "learned from the IPv4 session: {detail}"
    );
    assert!(detail.contains("BGP.next_hop: 2001:db8::11"), "{detail}");
    let protocols = rig.birdc("show protocols all ferrolb");
    assert!(protocols.contains("Established"), "{protocols}");
}

#[test]
fn bird_and_the_speaker_both_connecting_settle_on_one_session() {
    if !require(
        "BGP connection collision against BIRD",
        &[Need::Root, Need::Program("bird"), Need::Program("birdc")],
    ) {
        return;
    }
    // Neither side is passive: BIRD connects to the speaker's port 179 while the
    // speaker connects to BIRD's. Whatever the timing, one session must remain
    // (RFC 4271 6.8: BIRD's identifier 192.0.2.1 is lower than ours, 192.0.2.11,
    // so if both connections reach OPEN, ours is kept).
    let bird = bird_conf(Path::new("DIR"), None).replacen(
        "  passive on;\n",
        "  connect delay time 1;\n  connect retry time 1;\n",
        1,
    );
    let speaker = speaker_conf("  - {name: web, ip: 203.0.113.10}", None);
    let rig = Rig::custom("coll", &bird, &speaker);
    rig.wait_for("the route", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10/32")
    });
    // Stable for several connect-retry periods: no flapping between two connections.
    let before = rig.birdc("show protocols ferrolb");
    std::thread::sleep(Duration::from_secs(4));
    let after = rig.birdc("show protocols all ferrolb");
    assert!(after.contains("Established"), "{after}");
    assert!(rig.has_route("203.0.113.10/32"), "{}", rig.logs());
    let since = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("ferrolb"))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
    };
    assert_eq!(
        since(&before),
        since(&after),
        "the session flapped:\n{before}\n{after}\n{}",
        rig.logs()
    );
    let metrics = rig.metrics();
    assert!(
        metrics.contains("ferrolb_bgp_session_up{peer=\"bird\"} 1"),
        "{metrics}"
    );
    let log = std::fs::read_to_string(rig.dir.join("speaker.log")).unwrap_or_default();
    eprintln!(
        "collisions resolved by the speaker in this run: {}",
        log.matches("connection collision").count()
    );
}

#[test]
fn an_active_peer_takes_birds_connection_when_its_own_cannot_connect() {
    if !require(
        "BGP active peer accepting BIRD's connection",
        &[Need::Root, Need::Program("bird"), Need::Program("birdc")],
    ) {
        return;
    }
    // BIRD listens on 1790 only, so the speaker's connections to port 179 are
    // refused; BIRD connects to the speaker's port 179 instead, and the
    // speaker, although active, takes that connection (no collision: it had
    // none of its own).
    let bird = bird_conf(Path::new("DIR"), None)
        .replacen(
            "  local 192.0.2.1 as 65000;\n",
            "  local 192.0.2.1 port 1790 as 65000;\n",
            1,
        )
        .replacen(
            "  neighbor 192.0.2.11 as 65001;\n",
            "  neighbor 192.0.2.11 port 179 as 65001;\n",
            1,
        )
        .replacen(
            "  passive on;\n",
            "  connect delay time 1;\n  connect retry time 1;\n",
            1,
        );
    let speaker = speaker_conf("  - {name: web, ip: 203.0.113.10}", None);
    let rig = Rig::custom("accept", &bird, &speaker);
    rig.wait_for(
        "the route over BIRD's connection",
        Duration::from_secs(20),
        |r| r.has_route("203.0.113.10/32"),
    );
    let log = std::fs::read_to_string(rig.dir.join("speaker.log")).unwrap_or_default();
    assert!(
        log.contains("taking the router's connection"),
        "{}",
        rig.logs()
    );
}

#[test]
fn exabgp_with_the_wrong_md5_password_never_establishes() {
    if !require(
        "ExaBGP: wrong TCP-MD5 password",
        &[Need::Root, Need::Program("ip"), Need::Program("exabgp")],
    ) {
        return;
    }
    let exa = Exa::start(
        "xm",
        "  local-as 4200000001;\n  peer-as 4200000001;\n  md5-password the-right-one;\n",
        &ibgp_four_octet_speaker("a-wrong-one"),
    );
    // ExaBGP runs and listens, and its kernel refused the speaker's SYNs.
    wait_listening(&exa.lab, "ExaBGP", &exa.dir.join("exabgp.log"));
    exa.lab.wait_md5_refused("router", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    let dump = std::fs::read_to_string(exa.dir.join("received.json")).unwrap_or_default();
    assert!(!dump.contains("203.0.113.10/32"), "{dump}");
    let log = std::fs::read_to_string(exa.dir.join("speaker.log")).unwrap_or_default();
    assert!(!log.contains("session established"), "{log}");
}

/// BIRD's view of one protocol: its line of `show protocols`, whose "since"
/// column (milliseconds, `timeformat protocol iso long ms`) changes exactly
/// when the session goes down or comes up.
fn session_line(rig: &Rig, proto: &str) -> String {
    rig.birdc(&format!("show protocols {proto}"))
        .lines()
        .find(|l| l.starts_with(proto))
        .unwrap_or_default()
        .to_string()
}

/// The speaker's `config_reloads_total{result}` counter.
fn reloads(rig: &Rig, result: &str) -> u64 {
    let line = format!("ferrolb_config_reloads_total{{result=\"{result}\"}} ");
    rig.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn peers_and_advertisements_change_live_and_untouched_sessions_stay_up() {
    if !require(
        "bgp live reconfiguration",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let bird = format!(
        "timeformat protocol iso long ms;\n{}",
        bird_conf(Path::new("DIR"), None)
    );
    let services = "  - {name: web, ip: 203.0.113.10}\n  - {name: web6, ip: \"2001:db8:100::10\"}";
    let rig = Rig::custom("lr", &bird, &speaker_conf(services, None));
    rig.wait_for("both sessions and routes", Duration::from_secs(20), |r| {
        r.has_route("203.0.113.10") && r.has_route("2001:db8:100::10")
    });
    let v4 = session_line(&rig, "ferrolb");
    let v6 = session_line(&rig, "ferrolb6");
    assert!(
        v4.contains("Established") && v6.contains("Established"),
        "{v4}\n{v6}"
    );
    eprintln!("before:\n  {v4}\n  {v6}");
    let write = |text: String| std::fs::write(rig.dir.join("speaker.yaml"), text).unwrap();

    // 1. New communities for every peer, and a new hold time for the IPv4
    // peer only: the IPv6 session stays up and learns the new community as
    // an UPDATE; the IPv4 one is reset alone.
    let changed = speaker_conf(services, None)
        .replace("65000:100", "65000:200")
        .replacen("holdTime: 9s", "holdTime: 12s", 1);
    write(changed.clone());
    rig.wait_for(
        "the new community on both routes",
        Duration::from_secs(20),
        |r| {
            ["203.0.113.10", "2001:db8:100::10"].iter().all(|p| {
                r.birdc(&format!("show route for {p} all"))
                    .contains("(65000,200)")
            })
        },
    );
    rig.wait_for("the IPv4 session back", Duration::from_secs(20), |r| {
        let l = session_line(r, "ferrolb");
        l.contains("Established") && l != v4
    });
    assert_eq!(
        session_line(&rig, "ferrolb6"),
        v6,
        "the untouched IPv6 session stayed up; logs:\n{}",
        rig.logs()
    );
    assert!(!rig
        .birdc("show route for 2001:db8:100::10 all")
        .contains("(65000,100)"));
    let v4 = session_line(&rig, "ferrolb");
    eprintln!(
        "after the change:\n  {v4}\n  {}",
        session_line(&rig, "ferrolb6")
    );

    // 2. An invalid change (hold time 2 s) is refused: nothing moves.
    let errors = reloads(&rig, "error");
    write(changed.replace("holdTime: 9s", "holdTime: 2s"));
    rig.wait_for("the refusal", Duration::from_secs(10), |r| {
        reloads(r, "error") > errors
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(session_line(&rig, "ferrolb"), v4);
    assert_eq!(session_line(&rig, "ferrolb6"), v6);
    assert!(rig.has_route("203.0.113.10") && rig.has_route("2001:db8:100::10"));

    // 3. The IPv6 peer removed: its session ends with a Cease and its
    // series go; the IPv4 session is untouched.
    let without6: String = changed
        .lines()
        .filter(|l| !l.contains("name: bird6"))
        .map(|l| format!("{l}\n"))
        .collect();
    write(without6);
    rig.wait_for("the IPv6 session ended", Duration::from_secs(10), |r| {
        !session_line(r, "ferrolb6").contains("Established") && !r.has_route("2001:db8:100::10")
    });
    let proto = rig.birdc("show protocols all ferrolb6");
    assert!(
        proto.contains("Administrative shutdown") || proto.contains("removed"),
        "a Cease told BIRD why: {proto}"
    );
    assert_eq!(session_line(&rig, "ferrolb"), v4);
    assert!(rig.has_route("203.0.113.10"));
    rig.wait_for(
        "the removed peer's series gone",
        Duration::from_secs(5),
        |r| !r.metrics().contains("peer=\"bird6\""),
    );

    // 4. Added back: a new session, the route again; IPv4 still untouched.
    write(changed);
    rig.wait_for(
        "the IPv6 session and route back",
        Duration::from_secs(20),
        |r| session_line(r, "ferrolb6").contains("Established") && r.has_route("2001:db8:100::10"),
    );
    assert_eq!(session_line(&rig, "ferrolb"), v4);
    let log = std::fs::read_to_string(rig.dir.join("speaker.log")).unwrap_or_default();
    assert!(
        log.contains("BGP peers reset: bird") && log.contains("BGP peers removed: bird6"),
        "the log says what changed:\n{log}"
    );
}

#[test]
fn a_changed_password_applies_live_to_that_peer_alone() {
    if !require(
        "bgp live password change",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    // The IPv4 peer is passive (BIRD connects through the listening socket,
    // whose key is changed in place); the IPv6 peer connects out.
    let mut rig = Rig::start_with("lp", Some("first-key"), false, true);
    rig.wait_for("both sessions", Duration::from_secs(20), |r| {
        r.has_route("203.0.113.10") && r.has_route("2001:db8:100::10")
    });
    let v6 = session_line(&rig, "ferrolb6");
    let conf = std::fs::read_to_string(rig.dir.join("speaker.yaml")).unwrap();
    let v4_line = conf.lines().find(|l| l.contains("name: bird,")).unwrap();
    // A key BIRD does not have, for the IPv4 peer only.
    let wrong = conf.replace(v4_line, &v4_line.replace("first-key", "other-key"));
    std::fs::write(rig.dir.join("speaker.yaml"), &wrong).unwrap();
    rig.wait_for("the IPv4 session reset", Duration::from_secs(10), |r| {
        !session_line(r, "ferrolb").contains("Established")
    });
    // BIRD's reconnects are refused for their signature: the new key is in force.
    rig.lab.wait_md5_refused("node", Duration::from_secs(15));
    assert!(!session_line(&rig, "ferrolb").contains("Established"));
    assert_eq!(
        session_line(&rig, "ferrolb6"),
        v6,
        "the IPv6 session was not touched"
    );
    // The right key again: BIRD gets in.
    std::fs::write(rig.dir.join("speaker.yaml"), &conf).unwrap();
    rig.wait_for("the IPv4 session back", Duration::from_secs(20), |r| {
        session_line(r, "ferrolb").contains("Established") && r.has_route("203.0.113.10")
    });
    assert_eq!(session_line(&rig, "ferrolb6"), v6);
    rig.speaker.take();
}

/// MetalLB's per-peer `routerID` and per-advertisement `nodeSelectors`, as
/// ferrolb's `routerId` on a peer and `nodeSelector` on an advertisement:
/// BIRD sees the peer's own identifier, and only the advertisement that
/// selects this node is made, until a reload selects the other too.
#[test]
fn a_peers_own_router_id_and_an_advertisements_node_selector_reach_bird() {
    if !require(
        "a_peers_own_router_id_and_an_advertisements_node_selector_reach_bird",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let conf = |other_node: &str| {
        format!(
            "pools: [{{name: vips, addresses: [203.0.113.0/28]}}, {{name: other, addresses: [198.51.100.0/28]}}]
services:
  - {{name: web, ip: 203.0.113.10}}
  - {{name: api, ip: 198.51.100.10}}
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s, routerId: 10.255.0.7}}
  advertisements:
    - {{pools: [vips], nodeSelector: {{matchLabels: {{kubernetes.io/hostname: node1}}}}}}
    - {{pools: [other], nodeSelector: {{matchLabels: {{kubernetes.io/hostname: {other_node}}}}}}}
"
        )
    };
    let rig = Rig::custom("rid", &bird_conf(Path::new("DIR"), None), &conf("node2"));
    rig.wait_for(
        "the selected advertisement's route",
        Duration::from_secs(15),
        |r| r.has_route("203.0.113.10"),
    );
    let proto = rig.birdc("show protocols all ferrolb");
    assert!(
        proto.contains("Neighbor ID:") && proto.contains("10.255.0.7"),
        "BIRD sees the peer's own router ID:\n{proto}"
    );
    // Exactly one prefix went out: the advertisement for node2 is not made here.
    rig.wait_for("one prefix advertised", Duration::from_secs(5), |r| {
        r.metrics()
            .contains("ferrolb_bgp_prefixes_advertised{peer=\"bird\"} 1")
    });
    assert!(!rig.has_route("198.51.100.10"), "{}", rig.logs());
    // A reload that selects this node for the other advertisement too.
    std::fs::write(rig.dir.join("speaker.yaml"), conf("node1")).unwrap();
    let took = rig.wait_for("the newly selected route", Duration::from_secs(10), |r| {
        r.has_route("198.51.100.10")
    });
    eprintln!("reload to the newly selected advertisement's route: {took:?}");
    assert!(rig.has_route("203.0.113.10"));
}

/// An advertisement's `serviceSelector` (MetalLB's BGPAdvertisement
/// `serviceSelectors`): BIRD learns only the labelled Service's route, with
/// the advertisement's community; relabelling Services live adds the one
/// now selected and withdraws the one no longer selected.
#[test]
fn an_advertisements_service_selector_picks_the_routes_bird_learns() {
    if !require(
        "an_advertisements_service_selector_picks_the_routes_bird_learns",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let conf = |web: &str, api: &str| {
        format!(
            "pools: [{{name: vips, addresses: [203.0.113.0/28]}}]
services:
  - {{name: web, ip: 203.0.113.10, labels: {{exposure: {web}}}}}
  - {{name: api, ip: 203.0.113.11, labels: {{exposure: {api}}}}}
bgp:
  routerId: 192.0.2.11
  peers:
    - {{name: bird, address: 192.0.2.1, asn: 65000, myAsn: 65001, holdTime: 9s}}
  advertisements:
    - {{pools: [vips], communities: [\"65000:7\"], serviceSelector: {{matchLabels: {{exposure: internet}}}}}}
"
        )
    };
    let rig = Rig::custom(
        "svs",
        &bird_conf(Path::new("DIR"), None),
        &conf("internet", "private"),
    );
    rig.wait_for(
        "the selected Service's route",
        Duration::from_secs(15),
        |r| r.has_route("203.0.113.10"),
    );
    let route = rig.birdc("show route for 203.0.113.10 all");
    assert!(
        route.contains("(65000,7)"),
        "the advertisement's community:\n{route}"
    );
    rig.wait_for("one prefix advertised", Duration::from_secs(5), |r| {
        r.metrics()
            .contains("ferrolb_bgp_prefixes_advertised{peer=\"bird\"} 1")
    });
    assert!(!rig.has_route("203.0.113.11"), "{}", rig.logs());
    // Relabelled live: api is now selected, web no longer.
    std::fs::write(rig.dir.join("speaker.yaml"), conf("private", "internet")).unwrap();
    rig.wait_for("api's route", Duration::from_secs(10), |r| {
        r.has_route("203.0.113.11")
    });
    rig.wait_for("web's route withdrawn", Duration::from_secs(10), |r| {
        !r.has_route("203.0.113.10")
    });
}

/// BFD in the passive role (MetalLB's BFDProfile `passiveMode`): BIRD's
/// active BFD starts the session, the speaker answers, and both see it up.
#[test]
fn a_passive_bfd_session_comes_up_when_bird_starts_it() {
    if !require(
        "a_passive_bfd_session_comes_up_when_bird_starts_it",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("birdc"),
        ],
    ) {
        return;
    }
    let mut bird = bird_conf(Path::new("DIR"), None);
    bird = bird.replacen("  passive on;\n", "  passive on;\n  bfd on;\n", 1);
    bird.push_str("protocol bfd {\n  interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n}\n");
    let speaker = speaker_conf("  - {name: web, ip: 203.0.113.10}", None).replacen(
        "holdTime: 9s",
        "holdTime: 9s, bfd: {receiveInterval: 100ms, transmitInterval: 100ms, detectMultiplier: 3, passiveMode: true}",
        1,
    );
    let rig = Rig::custom("fp", &bird, &speaker);
    rig.wait_for("route and BFD up", Duration::from_secs(15), |r| {
        r.has_route("203.0.113.10") && r.birdc("show bfd sessions").contains("Up")
    });
    rig.wait_for("BFD up at the speaker", Duration::from_secs(5), |r| {
        r.metrics()
            .contains("ferrolb_bfd_session_up{peer=\"bird\"} 1")
    });
}
