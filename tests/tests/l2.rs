//! Layer 2 mode against the real Linux kernel: a client namespace and three
//! node namespaces on one bridge, each node running `ferrolb-speaker
//! standalone` with the same config and a local backend that answers with
//! the node's name. The client is the kernel (its ARP/ND cache, its TCP).
//! Needs root; skips loudly without it (and fails under CI's no-skip rule).

use ferrolb_tests::l2lab::Cluster;
use ferrolb_tests::{require, Need};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn ipv4_owner_killed_fails_over_and_does_not_flap_back() {
    if !require(
        "ipv4_owner_killed_fails_over_and_does_not_flap_back",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut c = Cluster::start("a");
    let url = "http://192.0.2.100:8080/";
    let owner = c.wait_served(url, Duration::from_secs(10));
    // One owner answers, and the client's ARP entry points at it.
    let answers = c.arp_answers("192.0.2.100");
    assert_eq!(
        answers,
        BTreeSet::from([c.lab.mac(&owner)]),
        "exactly the owner answers ARP; logs:\n{}",
        c.logs()
    );
    assert_eq!(c.neighbour_mac("192.0.2.100"), c.lab.mac(&owner));
    for _ in 0..5 {
        assert_eq!(
            c.get(url, 1.0).as_deref(),
            Some(owner.as_str()),
            "the VIP stays put"
        );
    }

    // Kill the owner without warning: traffic must flow again through another node.
    let t = Instant::now();
    c.kill_speaker(&owner);
    let next = c.wait_served(url, Duration::from_secs(5));
    let failover = t.elapsed();
    assert_ne!(next, owner);
    // A figure, not a limit (tests/bench/l2_failover.sh measures it); the
    // wait above bounds it at 5 s.
    eprintln!("IPv4 failover after SIGKILL: {failover:?} (client polling with python, ~30 ms per attempt)");
    let answers = c.arp_answers("192.0.2.100");
    assert_eq!(
        answers,
        BTreeSet::from([c.lab.mac(&next)]),
        "one answer after convergence"
    );
    assert_eq!(
        c.neighbour_mac("192.0.2.100"),
        c.lab.mac(&next),
        "gratuitous ARP updated the client"
    );

    // The old owner comes back: the VIP stays where it is.
    c.start_speaker(&owner);
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        assert_eq!(
            c.get(url, 1.0).as_deref(),
            Some(next.as_str()),
            "no flap-back; logs:\n{}",
            c.logs()
        );
    }
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&next)])
    );
}

#[test]
fn link_cut_fails_over() {
    if !require(
        "link_cut_fails_over",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let c = Cluster::start("b");
    let url = "http://192.0.2.100:8080/";
    let owner = c.wait_served(url, Duration::from_secs(10));
    let t = Instant::now();
    c.lab.cut(&owner);
    let next = c.wait_served(url, Duration::from_secs(5));
    assert_ne!(next, owner);
    eprintln!("IPv4 failover after link cut: {:?}", t.elapsed());
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&next)])
    );
}

#[test]
fn ipv6_reachable_and_unicast_probe_without_source_lla_answered() {
    if !require(
        "ipv6_reachable_and_unicast_probe_without_source_lla_answered",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let c = Cluster::start("c");
    let owner = c.wait_served("http://[2001:db8::100]:8080/", Duration::from_secs(10));
    assert_eq!(c.neighbour_mac("2001:db8::100"), c.lab.mac(&owner));
    // A unicast neighbour solicitation without the source link-layer option (RFC 4861 7.2.2 allows it;
    // MetalLB drops these, #2920) must be answered with a solicited NA.
    let owner_mac = c.lab.mac(&owner);
    let code = r#"
import socket, struct, sys, time
def csum(src, dst, msg):
    data = src + dst + struct.pack("!I", len(msg)) + b"\x00\x00\x00\x3a" + msg
    if len(data) % 2: data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data)//2), data)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return (~s) & 0xffff
dst_mac = bytes.fromhex(sys.argv[1].replace(":", ""))
src = socket.inet_pton(socket.AF_INET6, "2001:db8::1"); dst = socket.inet_pton(socket.AF_INET6, "2001:db8::100")
ns = struct.pack("!BBHI", 135, 0, 0, 0) + dst
ns = ns[:2] + struct.pack("!H", csum(src, dst, ns)) + ns[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd)); s.bind(("eth0", 0))
mac = s.getsockname()[4]
ip6 = struct.pack("!IHBB", 6 << 28, len(ns), 58, 255) + src + dst
s.send(dst_mac + mac + b"\x86\xdd" + ip6 + ns); s.settimeout(0.05); end = time.time() + 1
while time.time() < end:
    try: f = s.recv(256)
    except socket.timeout: continue
    if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136 and f[62:78] == dst:
        print("NA", f[21], hex(f[58]), f[6:12].hex(":")); break
"#;
    let out = c
        .lab
        .exec_ok("client", &["python3", "-c", code, &owner_mac]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Hop limit 255, flags S|O (0x60), from the owner.
    assert_eq!(
        text,
        format!("NA 255 0x60 {owner_mac}"),
        "logs:\n{}",
        c.logs()
    );
}

#[test]
fn malformed_and_foreign_frames_change_nothing() {
    if !require(
        "malformed_and_foreign_frames_change_nothing",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let c = Cluster::start("d");
    let url = "http://192.0.2.100:8080/";
    let owner = c.wait_served(url, Duration::from_secs(10));
    let code = r#"
import socket, random
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)); s.bind(("eth0", 0))
mac = s.getsockname()[4]; r = random.Random(7)
for i in range(500):
    kind = r.choice([b"\x08\x06", b"\x86\xdd", b"\x08\x00", b"\x88\xcc"])
    body = bytes(r.randrange(256) for _ in range(r.randrange(0, 90)))
    s.send(b"\xff"*6 + mac + kind + body)
"#;
    c.lab.exec_ok("client", &["python3", "-c", code]);
    for _ in 0..5 {
        assert_eq!(
            c.get(url, 1.0).as_deref(),
            Some(owner.as_str()),
            "still served by the same owner"
        );
    }
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&owner)])
    );
    // The garbage was counted, and the owner's answers show in its metrics.
    let metrics = c.metrics(&owner);
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        count("ferrolb_l2_malformed_frames_total{interface=\"eth0\"}") > 0,
        "{metrics}"
    );
    assert!(
        count("ferrolb_l2_answers_total{interface=\"eth0\"}") > 0,
        "{metrics}"
    );
}

#[test]
fn split_brain_converges_to_one_owner() {
    if !require(
        "split_brain_converges_to_one_owner",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bridge"),
            Need::Program("python3"),
        ],
    ) {
        return;
    }
    let c = Cluster::start("e");
    let url = "http://192.0.2.100:8080/";
    c.wait_served(url, Duration::from_secs(10));
    // Partition: the nodes cannot hear each other, but all still reach the client.
    for (n, _, _) in ferrolb_tests::l2lab::NODES {
        c.lab.isolate(n, true);
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = c.arp_answers("192.0.2.100");
    eprintln!("answers during the partition: {during:?}");
    assert!(
        !during.is_empty(),
        "someone keeps serving during the partition"
    );
    // Heal: the claims meet and exactly one owner remains.
    for (n, _, _) in ferrolb_tests::l2lab::NODES {
        c.lab.isolate(n, false);
    }
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(5);
    loop {
        let answers = c.arp_answers("192.0.2.100");
        if answers.len() == 1 {
            eprintln!("one owner {:?} after the heal", healed.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {answers:?} 5 s after the heal; logs:\n{}",
            c.logs()
        );
    }
    let owner = c.wait_served(url, Duration::from_secs(5));
    for _ in 0..5 {
        assert_eq!(c.get(url, 1.0).as_deref(), Some(owner.as_str()));
    }
}

/// The local routes a speaker adds go when their VIP leaves the node for
/// good: after the linger once no service uses it, also when the speaker was
/// down while it went (a restarted speaker adopts its old routes), and all
/// of them, with the ARP sysctls, on `ferrolb-speaker cleanup-node`.
#[test]
fn local_routes_are_removed_when_their_vip_leaves_for_good() {
    if !require(
        "local_routes_are_removed_when_their_vip_leaves_for_good",
        &[Need::Root, Need::Program("ip")],
    ) {
        return;
    }
    let mut lab = ferrolb_tests::netns::Lab::new("r");
    lab.add("n1");
    lab.attach("n1", &["192.0.2.11/24"]);
    let dir = ferrolb_tests::speaker::unique_dir();
    let config = dir.join("config.yaml");
    let with = |vips: &[&str]| {
        let services: Vec<String> = vips
            .iter()
            .enumerate()
            .map(|(i, v)| format!("  - {{name: s{i}, ip: {v}, ports: [{{port: 80, backends: [\"127.0.0.1:9\"]}}]}}"))
            .collect();
        format!(
            "pools: [{{name: vips, addresses: [192.0.2.100-192.0.2.110]}}]\nl2: [{{pools: [vips], interfaces: [eth0]}}]\nmembers: [{{name: n1, address: \"192.0.2.11:7946\"}}]\nservices:\n{}\n",
            services.join("\n")
        )
    };
    let routes = |lab: &ferrolb_tests::netns::Lab| -> Vec<String> {
        let out = lab.exec_ok(
            "n1",
            &["ip", "route", "show", "table", "local", "proto", "249"],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .collect()
    };
    let wait =
        |lab: &ferrolb_tests::netns::Lab, want: &[&str], what: &str, log: &std::path::Path| {
            let t = Instant::now();
            loop {
                let now = routes(lab);
                if now == want {
                    return t.elapsed();
                }
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "{what}: routes {now:?}, wanted {want:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
    std::fs::write(&config, with(&["192.0.2.100", "192.0.2.101"])).unwrap();
    let log = dir.join("speaker.log");
    let args = ["--local-route-linger", "1s", "--reload-poll", "100ms"];
    let pid = ferrolb_tests::routers::speaker(&mut lab, "n1", &config, "n1", &args, &log);
    wait(
        &lab,
        &["192.0.2.100", "192.0.2.101"],
        "both VIPs local",
        &log,
    );
    // One service goes: its route goes after the linger, the other stays.
    std::fs::write(&config, with(&["192.0.2.100"])).unwrap();
    let t = Instant::now();
    wait(&lab, &["192.0.2.100"], "192.0.2.101 retired", &log);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "retired before the linger: {:?}",
        t.elapsed()
    );
    // The speaker dies; the last service goes while it is down; the new
    // speaker removes the route it finds.
    lab.kill(pid, "KILL");
    std::fs::write(&config, with(&["192.0.2.102"])).unwrap();
    assert_eq!(
        routes(&lab),
        ["192.0.2.100"],
        "a dead speaker leaves its routes"
    );
    let log2 = dir.join("speaker2.log");
    let pid = ferrolb_tests::routers::speaker(&mut lab, "n1", &config, "n1", &args, &log2);
    wait(
        &lab,
        &["192.0.2.102"],
        "the stale route retired after a restart",
        &log2,
    );
    lab.kill(pid, "KILL");
    // Uninstall: cleanup-node takes the rest and the ARP sysctls.
    let bin = ferrolb_tests::binary("ferrolb-speaker");
    let out = lab.exec_ok("n1", &[bin.to_str().unwrap(), "cleanup-node"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("removed 1 local route"), "{said}");
    assert!(routes(&lab).is_empty());
    for name in ["arp_ignore", "arp_announce"] {
        let out = lab.exec_ok(
            "n1",
            &["cat", &format!("/proc/sys/net/ipv4/conf/all/{name}")],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "{name}");
    }
}

/// Timing, advertisements and a refused change, applied to running speakers
/// through their configuration file: untouched VIPs keep their owner; a new
/// node selector moves the VIP at once; an invalid file (a bad value, or an
/// interface no node has) changes nothing.
#[test]
fn layer2_settings_change_live_and_a_refused_change_moves_nothing() {
    use ferrolb_tests::l2lab::{config, NODES};
    if !require(
        "layer2_settings_change_live",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let c = Cluster::start("lv");
    let url = "http://192.0.2.100:8080/";
    let owner = c.wait_served(url, Duration::from_secs(10));
    // Settled: one owner answers, and the ownership counters are the baseline.
    std::thread::sleep(Duration::from_secs(1));
    let changes = |c: &Cluster| c.ownership_changes();
    let reloads = |c: &Cluster, result: &str| -> Vec<u64> {
        NODES
            .iter()
            .map(|(n, _, _)| {
                c.counter(
                    n,
                    &format!("ferrolb_config_reloads_total{{result=\"{result}\"}}"),
                )
            })
            .collect()
    };
    // Every node took the new file (its counter moved past `before`).
    let wait_all = |c: &Cluster, result: &str, before: &[u64]| {
        ferrolb_tests::routers::wait_for(
            &format!("every speaker's reload ({result})"),
            Duration::from_secs(10),
            || reloads(c, result).iter().zip(before).all(|(a, b)| a > b),
            || c.logs(),
        );
    };
    let settled = changes(&c);
    let ok = reloads(&c, "ok");

    // 1. Faster heartbeats and another refresh: the owner stays.
    let fast = format!(
        "{}failover: {{heartbeatInterval: 50ms, deadAfter: 250ms, refreshInterval: 5s}}\n",
        config()
    );
    c.set_config(&fast);
    wait_all(&c, "ok", &ok);
    assert!(
        c.logs().matches("failure detector timing changed").count() >= NODES.len(),
        "every node applied the timing; logs:\n{}",
        c.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        changes(&c),
        settled,
        "no ownership moved; logs:\n{}",
        c.logs()
    );
    assert_eq!(c.get(url, 1.0).as_deref(), Some(owner.as_str()));
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&owner)])
    );

    // 2. A node selector that leaves the owner out: the VIP moves now.
    let ok = reloads(&c, "ok");
    let without_owner = fast.replace(
        "l2: [{pools: [vips], interfaces: [eth0]}]",
        &format!("l2: [{{pools: [vips], interfaces: [eth0], nodeSelector: {{matchExpressions: [{{key: kubernetes.io/hostname, operator: NotIn, values: [{owner}]}}]}}}}]"),
    );
    assert_ne!(without_owner, fast);
    c.set_config(&without_owner);
    wait_all(&c, "ok", &ok);
    let t = Instant::now();
    let next = loop {
        match c.get(url, 0.5) {
            Some(n) if n != owner => break n,
            _ => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the VIP did not leave {owner}; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.arp_answers("192.0.2.100"),
        BTreeSet::from([c.lab.mac(&next)])
    );
    let settled = changes(&c);

    // 3. Refused: a heartbeat interval below the minimum, then an interface
    // that does not exist. Each is counted as an error; nothing moves.
    for bad in [
        without_owner.replace("heartbeatInterval: 50ms", "heartbeatInterval: 5ms"),
        without_owner.replace("interfaces: [eth0]", "interfaces: [eth9]"),
    ] {
        let errors = reloads(&c, "error");
        c.set_config(&bad);
        wait_all(&c, "error", &errors);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(changes(&c), settled, "{bad}\nlogs:\n{}", c.logs());
        assert_eq!(c.get(url, 1.0).as_deref(), Some(next.as_str()));
        assert_eq!(
            c.arp_answers("192.0.2.100"),
            BTreeSet::from([c.lab.mac(&next)])
        );
    }
    assert!(
        c.logs().contains("eth9"),
        "the refusal names the interface; logs:\n{}",
        c.logs()
    );
}

/// Two Services on one address (a sharing key, the same `ip:` on distinct
/// ports) have one owner: layer 2 elects them as a group, keyed by the
/// first by name. The second Service's name is chosen so that, elected on
/// its own, it would land on another node than the first's owner (as it
/// did before groups): two nodes answering ARP for one address.
#[test]
fn services_sharing_an_address_have_one_owner() {
    use ferrolb_tests::l2lab::{config, NODES};
    if !require(
        "services_sharing_an_address_have_one_owner",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let best = |key: &str| {
        NODES
            .iter()
            .map(|(n, _, _)| *n)
            .max_by_key(|n| ferrolb_l2::election::score(n, key))
            .expect("nodes")
    };
    let c = Cluster::start("sh");
    let owner = c.wait_served("http://192.0.2.100:8080/", Duration::from_secs(10));
    // A name no claim holds yet, whose rendezvous winner is another node.
    let alt = (0..50)
        .map(|i| format!("web-alt{i}"))
        .find(|k| best(k) != owner)
        .expect("some name elects another node");
    let shared = config().replace(
        "  - name: web6\n",
        &format!("  - name: {alt}\n    ip: 192.0.2.100\n    ports: [{{port: 8081, backends: [\"127.0.0.1:9000\"], healthCheck: {{type: tcp, interval: 100ms, timeout: 90ms}}}}]\n  - name: web6\n"),
    );
    assert_ne!(shared, config());
    c.set_config(&shared);
    let alt_url = "http://192.0.2.100:8081/";
    assert_eq!(c.wait_served(alt_url, Duration::from_secs(10)), owner);
    // Every node runs the new file: one MAC answers, again and again.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        let answers = c.arp_answers("192.0.2.100");
        assert_eq!(answers.len(), 1, "answers {answers:?}; logs:\n{}", c.logs());
        assert_eq!(c.get(alt_url, 1.0).as_deref(), Some(owner.as_str()));
        assert_eq!(
            c.get("http://192.0.2.100:8080/", 1.0).as_deref(),
            Some(owner.as_str())
        );
    }
}

/// The fast profile: the dead owner's monitors give their verdict and the
/// others take it at once (not after the slow path's 400 ms).
#[test]
fn fast_profile_fails_over_on_the_monitors_verdict() {
    use ferrolb_tests::l2lab::{config, probe_failover};
    if !require(
        "fast_profile_fails_over_on_the_monitors_verdict",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut c = Cluster::start_with_config(
        "fp",
        None,
        &format!("{}failover: {{profile: fast}}\n", config()),
    );
    let url = "http://192.0.2.100:8080/";
    let owner = c.wait_served(url, Duration::from_secs(10));
    let pid = c.speaker_pid(&owner).expect("running");
    let p = probe_failover(&c.lab, pid, "192.0.2.100", 8080, &owner);
    c.reap_speaker(&owner);
    let served = p
        .served_ms
        .unwrap_or_else(|| panic!("no takeover ({}); logs:\n{}", p.raw, c.logs()));
    // A figure, not a limit (tests/bench/l2_failover.sh has percentiles).
    eprintln!("fast profile: SIGKILL -> served again after {served:.0} ms");
    // The survivors took it down on the verdicts, not after the slow silence.
    for (n, _, _) in ferrolb_tests::l2lab::NODES {
        if n != owner {
            let deadline = Instant::now() + Duration::from_secs(2);
            while c.counter(n, "ferrolb_l2_fast_detections_total") == 0 {
                assert!(Instant::now() < deadline, "{n}; logs:\n{}", c.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A short flap of the owner's link (down long enough for the fast profile
/// to move the VIP, back before the slow path would have noticed): the VIP
/// moves once and stays, because a node whose link returns listens first.
#[test]
fn a_short_link_flap_moves_the_vip_once() {
    use ferrolb_tests::l2lab::config;
    if !require(
        "a_short_link_flap_moves_the_vip_once",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let c = Cluster::start_with_config(
        "lf",
        None,
        &format!("{}failover: {{profile: fast}}\n", config()),
    );
    let url = "http://192.0.2.100:8080/";
    for round in 0..5 {
        let owner = c.wait_served(url, Duration::from_secs(10));
        c.lab.cut(&owner);
        let next = c.wait_served(url, Duration::from_secs(5));
        c.lab.uncut(&owner);
        assert_ne!(next, owner, "round {round}");
        // The returned node hears the new claim before it may take anything.
        std::thread::sleep(Duration::from_millis(800));
        for _ in 0..5 {
            assert_eq!(
                c.get(url, 1.0).as_deref(),
                Some(next.as_str()),
                "round {round}: no flap-back to {owner}; logs:\n{}",
                c.logs()
            );
        }
    }
}

/// A node whose link has just come back listens before it takes anything,
/// and says so in its heartbeats (standby): if the owner dies meanwhile,
/// the VIP goes to a node that takes it now, even where the election's
/// hash prefers the listening node (which, unflagged, its peers would
/// elect, leaving the VIP unanswered until it finished listening).
#[test]
fn a_node_listening_after_its_link_returns_is_passed_over() {
    use ferrolb_tests::l2lab::{config, NODES};
    if !require(
        "a_node_listening_after_its_link_returns_is_passed_over",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut c = Cluster::start_with_config(
        "sb",
        None,
        &format!("{}failover: {{profile: fast}}\n", config()),
    );
    let url = "http://192.0.2.100:8080/";
    // At start the hash's first choice owns the VIP; it is also the first
    // choice between itself and any other node.
    let first = c.wait_served(url, Duration::from_secs(10));
    c.lab.cut(&first);
    let second = c.wait_served(url, Duration::from_secs(5));
    assert_ne!(second, first);
    let third = NODES
        .iter()
        .map(|(n, _, _)| n.to_string())
        .find(|n| *n != first && *n != second)
        .unwrap();
    // The link returns; at once (well inside the 400 ms the returning node
    // listens) the owner dies.
    c.lab.uncut(&first);
    c.kill_speaker(&second);
    let next = c.wait_served(url, Duration::from_secs(5));
    assert_eq!(
        next,
        third,
        "the VIP went to the listening node's choice; logs:\n{}",
        c.logs()
    );
    // And stays there once the returned node is a candidate again.
    std::thread::sleep(Duration::from_millis(1_000));
    for _ in 0..5 {
        assert_eq!(
            c.get(url, 1.0).as_deref(),
            Some(third.as_str()),
            "logs:\n{}",
            c.logs()
        );
    }
    // The node whose link flapped answers ARP again once it owns the VIP
    // (its packet socket saw "network is down" and must not have stopped).
    c.kill_speaker(&third);
    assert_eq!(c.wait_served(url, Duration::from_secs(5)), first);
    let answers = c.arp_answers("192.0.2.100");
    assert_eq!(
        answers.len(),
        1,
        "one answer to a broadcast ARP request, from {first}: {answers:?}; logs:\n{}",
        c.logs()
    );
}

/// The MAC `host`'s kernel resolves `vip` to on `dev` after a datagram to
/// it (the kernel asks up to three times, a second apart), if any.
fn resolved(lab: &ferrolb_tests::netns::Lab, host: &str, dev: &str, vip: &str) -> Option<String> {
    let send = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{vip}', 9))"
    );
    let _ = lab.exec(host, &["python3", "-c", &send]);
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3500) {
        let out = lab.exec_ok(host, &["ip", "neigh", "show", vip, "dev", dev]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut words = text.split_whitespace();
        if let Some(mac) = words.find(|w| *w == "lladdr").and(words.next()) {
            return Some(mac.to_string());
        }
        if text.contains("FAILED") {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A node with a container network's veth (`cali…`, as Calico names its
/// host ends): with `interfaces` left out the speaker answers on the node's
/// real link and, by default, not on the veth (a pod asking gets no
/// answer: the default `excludeInterfaces`); with `excludeInterfaces: []`
/// it answers there too. The askers are kernels: their neighbour tables.
#[test]
fn container_network_interfaces_are_left_out_unless_the_exclusions_are_cleared() {
    if !require(
        "container_network_interfaces_are_left_out_unless_the_exclusions_are_cleared",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut lab = ferrolb_tests::netns::Lab::new("x");
    lab.add("n1");
    lab.attach("n1", &["192.0.2.11/24"]);
    lab.add("client");
    lab.attach("client", &["192.0.2.1/24"]);
    lab.add("pod");
    let pod_ns = lab.name("pod");
    lab.exec_ok(
        "n1",
        &[
            "ip", "link", "add", "cali9f1", "type", "veth", "peer", "name", "eth1", "netns",
            &pod_ns,
        ],
    );
    lab.exec_ok(
        "n1",
        &["ip", "addr", "add", "10.99.0.1/24", "dev", "cali9f1"],
    );
    lab.exec_ok("n1", &["ip", "link", "set", "cali9f1", "up"]);
    lab.exec_ok("pod", &["ip", "addr", "add", "10.99.0.2/24", "dev", "eth1"]);
    lab.exec_ok("pod", &["ip", "link", "set", "eth1", "up"]);
    lab.exec_ok(
        "pod",
        &["ip", "route", "add", "192.0.2.100/32", "dev", "eth1"],
    );
    let dir = ferrolb_tests::speaker::unique_dir();
    let config = dir.join("config.yaml");
    let conf = |extra: &str| {
        format!(
            "pools: [{{name: vips, addresses: [192.0.2.100-192.0.2.110]}}]\nl2: [{{pools: [vips]{extra}}}]\nmembers: [{{name: n1, address: \"192.0.2.11\"}}]\nservices:\n  - {{name: web, ip: 192.0.2.100, ports: [{{port: 80, backends: [\"127.0.0.1:9\"]}}]}}\n"
        )
    };
    std::fs::write(&config, conf("")).unwrap();
    let log = dir.join("speaker.log");
    ferrolb_tests::routers::speaker(
        &mut lab,
        "n1",
        &config,
        "n1",
        &["--reload-poll", "100ms"],
        &log,
    );
    let speaker_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t = Instant::now();
    let eth0 = lab.mac("n1");
    while resolved(&lab, "client", "eth0", "192.0.2.100").as_deref() != Some(eth0.as_str()) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the client never resolved the VIP to n1:\n{}",
            speaker_log()
        );
    }
    // The pod behind the veth: no answer (its kernel asked three times).
    assert_eq!(
        resolved(&lab, "pod", "eth1", "192.0.2.100"),
        None,
        "answered on cali9f1:\n{}",
        speaker_log()
    );
    // Exclusions cleared: answered on the veth too, with its own MAC.
    std::fs::write(&config, conf(", excludeInterfaces: []")).unwrap();
    let cali = String::from_utf8_lossy(
        &lab.exec_ok("n1", &["cat", "/sys/class/net/cali9f1/address"])
            .stdout,
    )
    .trim()
    .to_string();
    let t = Instant::now();
    loop {
        if resolved(&lab, "pod", "eth1", "192.0.2.100").as_deref() == Some(cali.as_str()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no answer on cali9f1 after the exclusions were cleared:\n{}",
            speaker_log()
        );
        // A failed entry is retried at the next ping; give it a fresh start.
        let _ = lab.exec("pod", &["ip", "neigh", "flush", "dev", "eth1"]);
    }
    assert_eq!(
        resolved(&lab, "client", "eth0", "192.0.2.100").as_deref(),
        Some(eth0.as_str())
    );
}

/// Each l2 entry's `interfaces` scope its own pools: a node on two segments
/// answers for the first pool's VIP on the first segment only and for the
/// second pool's on the second only (before, every VIP was answered on the
/// union of the entries' interfaces). The askers are the clients' kernels.
#[test]
fn each_l2_entrys_interfaces_scope_its_own_pools() {
    if !require(
        "each_l2_entrys_interfaces_scope_its_own_pools",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let mut lab = ferrolb_tests::netns::Lab::new("y");
    lab.add("n1");
    lab.attach("n1", &["192.0.2.11/24"]);
    lab.add("a");
    lab.attach("a", &["192.0.2.1/24"]);
    lab.add("b");
    lab.link("n1", &["198.51.100.11/24"], "b", &["198.51.100.1/24"]);
    // Both clients send everything for the two VIPs out of their own link.
    for (host, dev) in [("a", "eth0"), ("b", "to-n1")] {
        for vip in ["192.0.2.100", "198.51.100.100"] {
            lab.exec_ok(
                host,
                &["ip", "route", "replace", &format!("{vip}/32"), "dev", dev],
            );
        }
    }
    let dir = ferrolb_tests::speaker::unique_dir();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "pools: [{name: front, addresses: [192.0.2.100/32]}, {name: back, addresses: [198.51.100.100/32]}]
l2:
  - {pools: [front], interfaces: [eth0]}
  - {pools: [back], interfaces: [to-b]}
members: [{name: n1, address: \"192.0.2.11\"}]
services:
  - {name: web, ip: 192.0.2.100, ports: [{port: 80, backends: [\"127.0.0.1:9\"]}]}
  - {name: db, ip: 198.51.100.100, ports: [{port: 80, backends: [\"127.0.0.1:9\"]}]}
",
    )
    .unwrap();
    let log = dir.join("speaker.log");
    ferrolb_tests::routers::speaker(&mut lab, "n1", &config, "n1", &[], &log);
    let speaker_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let eth0 = lab.mac("n1");
    let to_b = String::from_utf8_lossy(
        &lab.exec_ok("n1", &["cat", "/sys/class/net/to-b/address"])
            .stdout,
    )
    .trim()
    .to_string();
    let t = Instant::now();
    while resolved(&lab, "a", "eth0", "192.0.2.100").as_deref() != Some(eth0.as_str()) {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "a never resolved front's VIP:\n{}",
            speaker_log()
        );
    }
    assert_eq!(
        resolved(&lab, "b", "to-n1", "198.51.100.100").as_deref(),
        Some(to_b.as_str()),
        "{}",
        speaker_log()
    );
    // Each VIP only on its own entry's interface.
    assert_eq!(
        resolved(&lab, "a", "eth0", "198.51.100.100"),
        None,
        "back's VIP answered on eth0:\n{}",
        speaker_log()
    );
    assert_eq!(
        resolved(&lab, "b", "to-n1", "192.0.2.100"),
        None,
        "front's VIP answered on to-b:\n{}",
        speaker_log()
    );
}

/// `serviceSelector` on l2 entries: each entry announces the Services its
/// selector matches, from the nodes its `nodeSelector` allows; a Service no
/// entry selects is answered by nobody, though its pool is covered. Relabel
/// a Service and it moves to the other entry's node; give an owned Service a
/// new address and its owner answers the new one and stops answering the
/// old (it kept answering the old until a failover before). The askers are
/// the client's broadcast ARP requests; one answer, from the right MAC.
#[test]
fn an_l2_entrys_service_selector_picks_services_and_their_announcers() {
    use ferrolb_tests::l2lab::NODES;
    if !require(
        "an_l2_entrys_service_selector_picks_services_and_their_announcers",
        &[Need::Root, Need::Program("ip"), Need::Program("python3")],
    ) {
        return;
    }
    let members: Vec<String> = NODES
        .iter()
        .map(|(n, v4, _)| format!("  - {{name: {n}, address: \"{v4}:7947\"}}"))
        .collect();
    let port = "ports: [{port: 8080, backends: [\"127.0.0.1:9000\"], healthCheck: {type: tcp, interval: 100ms, timeout: 90ms}}]";
    let conf = |web_tier: &str, db_ip: &str| {
        format!(
            "pools: [{{name: vips, addresses: [192.0.2.100-192.0.2.103]}}]
l2:
  - {{pools: [vips], interfaces: [eth0], serviceSelector: {{matchLabels: {{tier: edge}}}}, nodeSelector: {{matchLabels: {{kubernetes.io/hostname: node2}}}}}}
  - {{pools: [vips], interfaces: [eth0], serviceSelector: {{matchLabels: {{tier: core}}}}, nodeSelector: {{matchLabels: {{kubernetes.io/hostname: node3}}}}}}
members:
{}
services:
  - {{name: web, ip: 192.0.2.100, labels: {{tier: {web_tier}}}, {port}}}
  - {{name: db, ip: {db_ip}, labels: {{tier: core}}, {port}}}
  - {{name: other, ip: 192.0.2.102, {port}}}
",
            members.join("\n")
        )
    };
    let c = Cluster::start_with_config("ss", None, &conf("edge", "192.0.2.101"));
    let mac = |n: &str| c.lab.mac(n);
    let one_answer = |vip: &str, node: &str| {
        let t = Instant::now();
        loop {
            let answers = c.arp_answers(vip);
            if answers == BTreeSet::from([mac(node)]) {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{vip}: answers {answers:?}, wanted only {node}'s; logs:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    one_answer("192.0.2.100", "node2");
    one_answer("192.0.2.101", "node3");
    assert_eq!(
        c.wait_served("http://192.0.2.100:8080/", Duration::from_secs(10)),
        "node2"
    );
    assert_eq!(
        c.wait_served("http://192.0.2.101:8080/", Duration::from_secs(10)),
        "node3"
    );
    // Selected by no entry: nobody answers, again and again.
    for _ in 0..3 {
        let answers = c.arp_answers("192.0.2.102");
        assert!(answers.is_empty(), "other answered by {answers:?}");
    }
    // Relabelled: web moves to the core entry's node, and only there.
    c.set_config(&conf("core", "192.0.2.101"));
    one_answer("192.0.2.100", "node3");
    let t = Instant::now();
    while c.get("http://192.0.2.100:8080/", 0.5).as_deref() != Some("node3") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "web not served by node3 after the relabel; logs:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // db's address changes while node3 owns it: the new one is answered, the old one by nobody.
    c.set_config(&conf("core", "192.0.2.103"));
    one_answer("192.0.2.103", "node3");
    let t = Instant::now();
    loop {
        let answers = c.arp_answers("192.0.2.101");
        if answers.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the old address is still answered by {answers:?}; logs:\n{}",
            c.logs()
        );
    }
    assert_eq!(
        c.wait_served("http://192.0.2.103:8080/", Duration::from_secs(10)),
        "node3"
    );
}
