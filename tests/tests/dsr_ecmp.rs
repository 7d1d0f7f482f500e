//! Connections that survive a load-balancer change: two speakers in
//! `mode: kernel-dsr` advertise one VIP to BIRD 2, which spreads the
//! client's connections over both by ECMP (L4 hash); the backends, prepared
//! with `ferrolb-speaker prepare-backend`, answer the client directly.
//! 200 long-lived connections are opened; node1's speaker is SIGKILLed (its
//! session drops and BIRD withdraws its path: graceful restart is off here,
//! as it must be for the router to move the flows at once), then started
//! again (the path returns and the router moves some flows back). Each time
//! every connection must still answer from its own backend, because every
//! node picks the same backend for a client from the same Maglev table, and
//! with DSR nothing on the way back depends on which node carried a flow.
//! Needs root, `bird`, `python3` and the BPF program; skips loudly without
//! them (a failure in CI).

use ferrolb_tests::kernel_lab::Holder;
use ferrolb_tests::netns::Lab;
use ferrolb_tests::{binary, require, routers, Need};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODES: [(&str, &str); 2] = [("node1", "192.0.2.11"), ("node2", "192.0.2.12")];
const BACKENDS: [(&str, &str); 2] = [("b1", "192.0.2.21"), ("b2", "192.0.2.22")];
const VIP: &str = "203.0.113.10";
const CONNECTIONS: usize = 200;
/// Client addresses (Maglev balances by client address; the router's ECMP
/// hash by address and port).
const CLIENT_ADDRS: u8 = 20;

fn speaker_conf(router_id: &str, mode: &str) -> String {
    format!(
        "pools: [{{name: vips, addresses: [203.0.113.0/28]}}]
forwarder: {{mode: {mode}}}
services:
  - name: web
    ip: {VIP}
    ports:
      - port: 8080
        algorithm: maglev
        backends: [\"192.0.2.21:8080\", \"192.0.2.22:8080\"]
        healthCheck: {{type: tcp, interval: 100ms, timeout: 90ms, fall: 2}}
bgp:
  routerId: {router_id}
  peers:
    - name: bird
      address: 192.0.2.1
      asn: 65000
      myAsn: 65001
      holdTime: 9s
      gracefulRestart: {{enabled: false}}
"
    )
}

struct Rig {
    lab: Lab,
    dir: PathBuf,
    speakers: BTreeMap<String, u32>,
}

impl Rig {
    /// The lab with both speakers forwarding in `mode`.
    fn start(mode: &str) -> Rig {
        let mut lab = Lab::new("dsre");
        let dir = std::env::temp_dir().join(format!("ferrolb-dsr-ecmp-{}", lab.name("x")));
        std::fs::create_dir_all(&dir).unwrap();
        routers::router_with_client(&mut lab);
        for i in 10..10 + CLIENT_ADDRS {
            lab.exec_ok(
                "client",
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("198.51.100.{i}/24"),
                    "dev",
                    "to-router",
                ],
            );
        }
        std::fs::write(dir.join("bird.conf"), routers::bird_ecmp_conf(&dir, &NODES)).unwrap();
        routers::bird(&mut lab, "router", &dir);
        let speaker = binary("ferrolb-speaker");
        let echo = binary("ferrolb-echo");
        for (b, ip) in BACKENDS {
            lab.add(b);
            lab.attach(b, &[&format!("{ip}/24")]);
            // Replies go straight to the router, not back through a node.
            lab.exec_ok(b, &["ip", "route", "add", "default", "via", "192.0.2.1"]);
            lab.exec_ok(
                b,
                &[
                    speaker.to_str().unwrap(),
                    "prepare-backend",
                    "--vip",
                    VIP,
                    "--from",
                    "192.0.2.0/24",
                ],
            );
            lab.spawn(
                b,
                &[
                    echo.to_str().unwrap(),
                    "--http",
                    &format!("{b}@0.0.0.0:8080"),
                ],
                &dir.join(format!("{b}-echo.log")),
            );
        }
        for (n, ip) in NODES {
            lab.add(n);
            lab.attach(n, &[&format!("{ip}/24")]);
            lab.exec_ok(
                n,
                &["ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1"],
            );
            std::fs::write(dir.join(format!("{n}.yaml")), speaker_conf(ip, mode)).unwrap();
        }
        let mut rig = Rig {
            lab,
            dir,
            speakers: BTreeMap::new(),
        };
        for (n, _) in NODES {
            rig.start_speaker(n);
        }
        rig
    }

    fn start_speaker(&mut self, n: &str) {
        let pid = routers::speaker(
            &mut self.lab,
            n,
            &self.dir.join(format!("{n}.yaml")),
            n,
            &["--log-level", "debug"],
            &self.dir.join(format!("{n}-speaker.log")),
        );
        self.speakers.insert(n.to_string(), pid);
    }

    fn kernel_route(&self) -> String {
        let out = self.lab.exec("router", &["ip", "route", "show", VIP]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn both_paths(&self) -> bool {
        let r = self.kernel_route();
        r.contains("nexthop via 192.0.2.11") && r.contains("nexthop via 192.0.2.12")
    }

    /// New flows the kernel data path of node `n` took (0 if unreadable).
    fn kernel_flows(&self, n: &str) -> u64 {
        self.lab
            .speaker_metrics(n)
            .lines()
            .filter(|l| l.starts_with("ferrolb_kernel_flows_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn logs(&self) -> String {
        let sock = self.dir.join("bird.ctl");
        let birdc = |cmd: &str| routers::birdc(&self.lab, "router", &sock, cmd);
        let mut s = format!(
            "--- router kernel route\n{}--- bird protocols\n{}",
            self.kernel_route(),
            birdc("show protocols")
        );
        s.push_str(&routers::read_logs(
            &self.dir,
            &["bird.log", "node1-speaker.log", "node2-speaker.log"],
        ));
        s
    }

    fn wait_for(&self, what: &str, within: Duration, cond: impl Fn(&Rig) -> bool) -> Duration {
        routers::wait_for(what, within, || cond(self), || self.logs())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits for the two-path route, opens the connections, and checks that
/// both nodes carry them in the kernel and every one answers.
fn established(rig: &Rig) -> Holder {
    rig.wait_for("a two-path route", Duration::from_secs(20), Rig::both_paths);
    let srcs: Vec<String> = (10..10 + CLIENT_ADDRS)
        .map(|i| format!("198.51.100.{i}"))
        .collect();
    let (mut holder, ready) = Holder::start(&rig.lab, "client", VIP, 8080, CONNECTIONS, &srcs);
    assert_eq!(
        ready,
        format!("ready {CONNECTIONS} b1 b2"),
        "every connection answered, by both backends\n{}",
        rig.logs()
    );
    // The speakers read the program's counters every second.
    let flows = |r: &Rig| -> Vec<u64> { NODES.iter().map(|(n, _)| r.kernel_flows(n)).collect() };
    rig.wait_for(
        "both nodes carrying the connections in the kernel",
        Duration::from_secs(5),
        |r| {
            let f = flows(r);
            f.iter().all(|&f| f > 0) && f.iter().sum::<u64>() >= CONNECTIONS as u64
        },
    );
    eprintln!(
        "new flows in each node's kernel data path: {:?}",
        flows(rig)
    );
    assert_eq!(holder.check(), (CONNECTIONS, CONNECTIONS));
    holder
}

/// SIGKILLs node1's speaker and waits until the router has withdrawn its path.
fn remove_node1(rig: &mut Rig) {
    let pid = rig.speakers.remove("node1").unwrap();
    rig.lab.kill(pid, "KILL");
    let t = Instant::now();
    rig.wait_for("node1's path withdrawn", Duration::from_secs(10), |r| {
        let route = r.kernel_route();
        route.contains("via 192.0.2.12") && !route.contains("192.0.2.11")
    });
    eprintln!("node1 killed to its path withdrawn: {:?}", t.elapsed());
}

#[test]
fn dsr_connections_survive_a_load_balancer_leaving_and_returning() {
    if !require(
        "dsr ecmp connection survival",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("python3"),
            Need::BpfProgram,
        ],
    ) {
        return;
    }
    let mut rig = Rig::start("kernel-dsr");
    let mut holder = established(&rig);
    // node1 leaves: its speaker is killed, the session drops, BIRD
    // withdraws its path and the router moves node1's flows to node2.
    remove_node1(&mut rig);
    let (alive, same) = holder.check();
    eprintln!("after node1 left: {alive}/{CONNECTIONS} connections alive, {same} on their backend");
    assert!(
        same * 100 >= CONNECTIONS * 99,
        "{same}/{CONNECTIONS} survived node1 leaving\n{}",
        rig.logs()
    );

    // node1 returns: the path is back and the router moves flows to it,
    // which it has never seen; it picks the same backends.
    rig.start_speaker("node1");
    let t = Instant::now();
    rig.wait_for(
        "node1's path back",
        Duration::from_secs(20),
        Rig::both_paths,
    );
    eprintln!("node1 restarted to its path back: {:?}", t.elapsed());
    let (alive2, same2) = holder.check();
    std::thread::sleep(Duration::from_millis(1500));
    let took = rig.kernel_flows("node1");
    eprintln!(
        "after node1 returned: {alive2}/{alive} connections alive, {same2} on their backend; node1 took {took} of them"
    );
    assert!(
        took > 0,
        "the router moved flows back to node1\n{}",
        rig.logs()
    );
    assert!(
        same2 * 100 >= CONNECTIONS * 99,
        "{same2}/{CONNECTIONS} survived node1 returning\n{}",
        rig.logs()
    );
}

/// The same change under NAT (`mode: kernel`): the connections node1
/// carried break, since node2 has no translation for them and the backend
/// answers a node address the client never used. Shows that the survival
/// above is DSR's doing, and that this lab can tell.
#[test]
fn nat_connections_through_the_leaving_node_break() {
    if !require(
        "nat ecmp connection loss",
        &[
            Need::Root,
            Need::Program("ip"),
            Need::Program("bird"),
            Need::Program("python3"),
            Need::BpfProgram,
        ],
    ) {
        return;
    }
    let mut rig = Rig::start("kernel");
    let mut holder = established(&rig);
    remove_node1(&mut rig);
    let (alive, _) = holder.check();
    eprintln!("NAT: after node1 left: {alive}/{CONNECTIONS} connections alive");
    assert!(
        alive < CONNECTIONS * 9 / 10,
        "node1's share of {CONNECTIONS} connections should have broken, {alive} alive\n{}",
        rig.logs()
    );
    assert!(alive > 0, "node2's own connections live on");
}
